"""Feature constraints of tabular evasion: what an attacker may change in a record, and how.

Realistic tabular attacks (Ballet et al. 2019, "Imperceptible Adversarial Attacks on Tabular Data";
Simonetto et al. 2022, "A Unified Framework for Adversarial Attack and Training in Constrained
Feature Space") cannot move every feature freely: an age cannot decrease, a count must stay an
integer, a one-hot category must stay one of its values. :class:`FeatureConstraints` is one frozen
value describing this, in the model's input space (the scaled features the model sees):

- ``immutable``: features that must keep their original value exactly;
- ``integer``: features on a grid ``offset + k * step`` (k integer) — e.g. integral in ORIGINAL units
  for a feature min/max-scaled to [0, 1]: ``step = 1 / (max - min)``, ``offset = -min / (max - min)``
  (``from_dict`` builds this from ``{"scale": [min, max]}``);
- ``categorical``: features restricted to a finite set of allowed values;
- ``ranges``: per-feature (lo, hi), intersected with the model's bounds;
- ``norm`` / ``eps``: a perturbation budget over the mutable features (``eps=None``: none here; the
  attack's threat model then carries it).

:meth:`FeatureConstraints.project` maps any candidate onto the constraints; :meth:`check` says per
record whether they all hold. Records are (N, n_features) or any shape that flattens to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...threat import canonical_norm, perturbation_norm, project_l1_ball

__all__ = ["FeatureConstraints"]

_SPEC_KEYS = {"immutable", "integer", "categorical", "ranges", "norm", "eps"}
_GRID_TOL = 1e-6  # in grid steps: float slack when deciding on which side of a grid point a value lies


def _finite(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise UsageError(f"{name} must be finite, got {v!r}")
    return f


@dataclass(frozen=True)
class FeatureConstraints:
    """Constraints on the features of a tabular record (model input space).

    Args:
        n_features: number of features of one record.
        immutable: indices of features that must not change.
        integer: ``{index: step}`` or ``{index: (step, offset)}``: the feature lies on the grid
            ``offset + k * step``. Stored as a sorted tuple of (index, step, offset).
        categorical: ``{index: [allowed values]}``. Stored as a sorted tuple of (index, values).
        ranges: ``{index: (lo, hi)}`` per-feature range. Stored as a sorted tuple of (index, lo, hi).
        norm, eps: perturbation budget over the mutable features (``eps=None``: no budget here).

    A feature may be at most one of immutable / integer / categorical, and an immutable feature has
    no range. The guarantees of :meth:`project` assume the reference record ``x0`` itself satisfies
    the per-feature constraints (grid, categories, ranges); :meth:`snap` makes a record do so.
    """

    n_features: int
    immutable: tuple[int, ...] = ()
    integer: Any = ()
    categorical: Any = ()
    ranges: Any = ()
    norm: str = "linf"
    eps: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, int) or self.n_features < 1:
            raise UsageError(f"n_features must be an integer >= 1, got {self.n_features!r}")
        d = self.n_features

        def index(i: Any, what: str) -> int:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d:
                raise UsageError(f"{what}: feature index {i!r} is not an integer in [0, {d - 1}]")
            return int(i)

        imm = tuple(sorted({index(i, "immutable") for i in self.immutable}))
        integer = []
        for i, g in _items(self.integer, "integer"):
            if isinstance(g, (tuple, list)) and len(g) == 2:
                step, offset = g
            elif isinstance(g, (int, float)) and not isinstance(g, bool):
                step, offset = g, 0.0
            else:
                raise UsageError(f"integer feature {i}: give step or (step, offset), got {g!r}")
            step, offset = _finite(f"integer feature {i} step", step), _finite(f"integer feature {i} offset", offset)
            if step <= 0:
                raise UsageError(f"integer feature {i}: the grid step must be > 0, got {step}")
            integer.append((index(i, "integer"), step, offset))
        cat = []
        for i, vals in _items(self.categorical, "categorical"):
            if isinstance(vals, (str, bytes)) or not isinstance(vals, (Sequence, set, frozenset)) or not len(vals):
                raise UsageError(f"categorical feature {i}: give a non-empty list of allowed values, got {vals!r}")
            cat.append(
                (index(i, "categorical"), tuple(sorted({_finite(f"categorical feature {i} value", v) for v in vals})))
            )
        rng = []
        for i, r in _items(self.ranges, "ranges"):
            if not isinstance(r, (tuple, list)) or len(r) != 2:
                raise UsageError(f"range of feature {i}: give (lo, hi), got {r!r}")
            lo, hi = _finite(f"range of feature {i} lo", r[0]), _finite(f"range of feature {i} hi", r[1])
            if lo > hi:
                raise UsageError(f"range of feature {i}: lo={lo} > hi={hi}")
            rng.append((index(i, "ranges"), lo, hi))
        for name, group in (
            ("integer", [t[0] for t in integer]),
            ("categorical", [t[0] for t in cat]),
            ("ranges", [t[0] for t in rng]),
        ):
            if len(set(group)) != len(group):
                raise UsageError(f"{name}: a feature is listed twice")
        overlaps = [
            ("immutable", "integer", set(imm) & {t[0] for t in integer}),
            ("immutable", "categorical", set(imm) & {t[0] for t in cat}),
            ("immutable", "ranges", set(imm) & {t[0] for t in rng}),
            ("integer", "categorical", {t[0] for t in integer} & {t[0] for t in cat}),
        ]
        for a, b, common in overlaps:
            if common:
                raise UsageError(f"features {sorted(common)} are both {a} and {b}: a feature has one kind")
        norm = canonical_norm(self.norm)
        eps = self.eps
        if eps is not None:
            eps = _finite("eps", eps)
            if eps < 0:
                raise UsageError(f"eps must be >= 0, got {eps}")
        for k, v in (
            ("immutable", imm),
            ("integer", tuple(sorted(integer))),
            ("categorical", tuple(sorted(cat))),
            ("ranges", tuple(sorted(rng))),
            ("norm", norm),
            ("eps", eps),
        ):
            object.__setattr__(self, k, v)

    # -- construction from a spec (JSON/TOML) ------------------------------------------------
    @classmethod
    def from_dict(
        cls, spec: Mapping[str, Any], n_features: int, feature_names: Sequence[str] | None = None
    ) -> FeatureConstraints:
        """Build constraints from a plain mapping, naming features by index or by name::

            {"immutable": ["mean radius", 1],
             "integer": {"mean texture": {"scale": [9.71, 39.28]},   # integral in original units
                         "3": {"step": 0.5, "offset": 0.0}},
             "categorical": {"4": [0.0, 0.5, 1.0]},
             "ranges": {"mean area": [0.1, 0.9]},
             "norm": "linf", "eps": 0.2}

        ``integer`` may also be a list of features (step 1, offset 0 in model units).
        """
        if not isinstance(spec, Mapping):
            raise UsageError(f"a constraints spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise UsageError(f"unknown constraint keys {sorted(unknown)}: use {', '.join(sorted(_SPEC_KEYS))}")
        names = {str(n): i for i, n in enumerate(feature_names or [])}

        def feat(f: Any) -> int:
            if isinstance(f, bool):
                raise UsageError(f"feature {f!r} is neither a name nor an index")
            if isinstance(f, int):
                return f
            if isinstance(f, str):
                if f in names:
                    return names[f]
                if f.strip().lstrip("-").isdigit():
                    return int(f)
                known = (
                    f": known names are {', '.join(list(names)[:8])}{', ...' if len(names) > 8 else ''}"
                    if names
                    else " (no feature names given)"
                )
                raise UsageError(f"unknown feature {f!r}{known}")
            raise UsageError(f"feature {f!r} is neither a name nor an index")

        imm = spec.get("immutable", [])
        if isinstance(imm, (str, int)) or not isinstance(imm, Sequence):
            raise UsageError(f"immutable must be a list of features, got {imm!r}")
        integer = _integer_grids(spec.get("integer", {}), feat)
        cat = {feat(f): v for f, v in _items(spec.get("categorical", {}), "categorical")}
        rng = {feat(f): v for f, v in _items(spec.get("ranges", {}), "ranges")}
        return cls(
            n_features,
            immutable=tuple(feat(f) for f in imm),
            integer=integer,
            categorical=cat,
            ranges=rng,
            norm=spec.get("norm", "linf"),
            eps=spec.get("eps"),
        )

    # -- geometry ------------------------------------------------------------------------------
    def mutable_mask(self, device: torch.device | None = None) -> Tensor:
        m = torch.ones(self.n_features, dtype=torch.bool, device=device)
        if self.immutable:
            m[list(self.immutable)] = False
        return m

    def _box(self, bounds: tuple[float, float] | None, device: torch.device) -> tuple[Tensor, Tensor]:
        lo = torch.full(
            (self.n_features,), -math.inf if bounds is None else float(bounds[0]), dtype=torch.float64, device=device
        )
        hi = torch.full(
            (self.n_features,), math.inf if bounds is None else float(bounds[1]), dtype=torch.float64, device=device
        )
        for i, a, b in self.ranges:
            lo[i], hi[i] = max(float(lo[i]), a), min(float(hi[i]), b)
            if lo[i] > hi[i]:
                raise UsageError(f"the range of feature {i} ({a}, {b}) lies outside the model's bounds {bounds}")
        imm = ~self.mutable_mask(device)
        return lo.masked_fill(imm, -math.inf), hi.masked_fill(imm, math.inf)

    def _flat(self, x: Tensor, name: str) -> Tensor:
        flat = x.reshape(x.shape[0], -1) if x.dim() else x
        if flat.dim() != 2 or flat.shape[1] != self.n_features:
            raise UsageError(f"{name} has shape {tuple(x.shape)}: expected records of {self.n_features} features")
        return flat.to(torch.float64)

    def _ball_norm(self, d: Tensor) -> Tensor:
        return perturbation_norm(d, self.norm)

    def _snap_discrete(self, z: Tensor, lo: Tensor, hi: Tensor, a: Tensor | None) -> Tensor:
        """Integer features to the nearest grid point in range (``a`` given: the grid point between
        ``z`` and ``a`` nearest to ``z``); categorical ones to the nearest allowed value (``a`` given:
        back to ``a``)."""
        z = z.clone()
        for i, step, off in self.integer:
            kmin = math.ceil((float(lo[i]) - off) / step - _GRID_TOL) if math.isfinite(float(lo[i])) else -math.inf
            kmax = math.floor((float(hi[i]) - off) / step + _GRID_TOL) if math.isfinite(float(hi[i])) else math.inf
            if kmin > kmax:
                raise UsageError(
                    f"integer feature {i}: no grid point {off:g} + k * {step:g} lies in its range [{float(lo[i]):g}, {float(hi[i]):g}]"
                )
            t = (z[:, i] - off) / step
            if a is None:
                k = t.round()
            else:
                t0 = (a[:, i] - off) / step
                k = torch.where(t >= t0, (t + _GRID_TOL).floor(), (t - _GRID_TOL).ceil())
            z[:, i] = off + k.clamp(kmin, kmax) * step
        for i, vals in self.categorical:
            v = torch.tensor(vals, dtype=z.dtype, device=z.device)
            v = v[(v >= lo[i]) & (v <= hi[i])]
            if v.numel() == 0:
                raise UsageError(f"categorical feature {i}: none of its values {list(vals)} lies in its range")
            z[:, i] = v[(z[:, i, None] - v).abs().argmin(dim=1)] if a is None else a[:, i]
        return z

    def snap(self, x: Tensor, *, bounds: tuple[float, float] | None = None) -> Tensor:
        """Make records satisfy the per-feature constraints (ranges, grids, categories), ignoring the
        budget: use it on the records to attack so that they are feasible themselves."""
        z = self._flat(x, "x")
        lo, hi = self._box(bounds, z.device)
        z = self._snap_discrete(torch.minimum(torch.maximum(z, lo), hi), lo, hi, None)
        return z.to(x.dtype).reshape(x.shape)

    def project(self, x0: Tensor, x: Tensor, *, bounds: tuple[float, float] | None = None) -> Tensor:
        """Map candidates ``x`` onto the constraints around the original records ``x0``.

        Order: immutable features reset to ``x0``; ranges (and ``bounds``) clamped; the mutable
        perturbation projected onto the ``norm`` ball of radius ``eps``; integer features rounded
        onto their grid and categorical ones snapped to the nearest allowed value. Where that
        rounding breaks the budget, integer features are rounded towards ``x0`` instead and
        categorical ones reset to ``x0``, which cannot increase any |delta_i|, so the budget holds
        again. With a feasible ``x0`` the result always satisfies :meth:`check`.
        """
        a, z = self._flat(x0, "x0"), self._flat(x, "x")
        if a.shape != z.shape:
            raise UsageError(f"x0 {tuple(x0.shape)} and x {tuple(x.shape)} must have the same shape")
        lo, hi = self._box(bounds, z.device)
        imm = ~self.mutable_mask(z.device)
        z = torch.where(imm, a, z)
        z = torch.minimum(torch.maximum(z, lo), hi)
        if self.eps is not None:
            d = z - a
            if self.norm == "linf":
                d = d.clamp(-self.eps, self.eps)
            elif self.norm == "l2":
                n = d.norm(dim=1, keepdim=True)
                d = d * torch.where(n > self.eps, self.eps / n.clamp_min(1e-300), torch.ones_like(n))
            else:
                d = project_l1_ball(d, self.eps)
            z = torch.minimum(torch.maximum(a + d, lo), hi)
        if not (self.integer or self.categorical):
            return z.to(x.dtype).reshape(x.shape)
        cont = z
        z = self._snap_discrete(cont, lo, hi, None)
        if self.eps is not None:
            over = self._ball_norm(z - a) > self.eps * (1 + 1e-9)
            if bool(over.any()):
                z[over] = self._snap_discrete(cont[over], lo, hi, a[over])
                still = self._ball_norm(z - a) > self.eps * (1 + 1e-9)
                if bool(still.any()):  # only possible when x0 is off its grid: keep x0's discrete values
                    disc = [i for i, _, _ in self.integer] + [i for i, _ in self.categorical]
                    rows = still.nonzero().flatten()
                    z[rows[:, None], torch.tensor(disc, device=z.device)] = a[
                        rows[:, None], torch.tensor(disc, device=z.device)
                    ]
        return z.to(x.dtype).reshape(x.shape)

    def check(
        self,
        x0: Tensor,
        x: Tensor,
        *,
        bounds: tuple[float, float] | None = None,
        atol: float = 1e-5,
        grid_atol: float = 1e-4,
    ) -> Tensor:
        """(N,) bool: every constraint holds for record i — immutable features exactly equal to
        ``x0``, ranges and ``bounds`` within ``atol``, integer features within ``grid_atol`` grid
        steps of their grid, categorical ones within ``atol`` of an allowed value, budget within ``atol``."""
        a, z = self._flat(x0, "x0"), self._flat(x, "x")
        lo, hi = self._box(bounds, z.device)
        ok = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        imm = ~self.mutable_mask(z.device)
        ok &= ((z == a) | ~imm).all(dim=1)
        ok &= ((z >= lo - atol) & (z <= hi + atol)).all(dim=1)
        for i, step, off in self.integer:
            t = (z[:, i] - off) / step
            ok &= (t - t.round()).abs() <= grid_atol
        for i, vals in self.categorical:
            v = torch.tensor(vals, dtype=z.dtype, device=z.device)
            ok &= (z[:, i, None] - v).abs().amin(dim=1) <= atol
        if self.eps is not None:
            ok &= self._ball_norm(z - a) <= self.eps + atol
        return ok

    def with_budget(self, norm: str, eps: float | None) -> FeatureConstraints:
        """The same constraints with another budget."""
        return FeatureConstraints(
            self.n_features, self.immutable, self.integer, self.categorical, self.ranges, norm, eps
        )


def _integer_grids(raw_int: Any, feat: Callable[[Any], int]) -> dict[int, tuple[float, float]]:
    """``{feature: (step, offset)}`` from a spec's ``integer`` entry: a list of features (step 1), or a mapping
    to a step, to ``{"step": s, "offset": o}`` or to ``{"scale": [min, max]}`` (integral in original units)."""
    integer: dict[int, tuple[float, float]] = {}
    if isinstance(raw_int, Sequence) and not isinstance(raw_int, str):
        raw_int = {f: {"step": 1.0} for f in raw_int}
    for f, g in _items(raw_int, "integer"):
        i = feat(f)
        if i in integer:
            raise UsageError(f"integer: feature {f!r} is listed twice")
        if isinstance(g, Mapping):
            bad = set(g) - {"scale", "step", "offset"}
            if bad or ("scale" in g) == ("step" in g):
                raise UsageError(
                    f"integer feature {f!r}: give either {{'scale': [min, max]}} or {{'step': s, 'offset': o}}, got {dict(g)!r}"
                )
            if "scale" in g:
                sc = g["scale"]
                if not isinstance(sc, Sequence) or isinstance(sc, str) or len(sc) != 2:
                    raise UsageError(f"integer feature {f!r}: scale must be [min, max], got {sc!r}")
                lo, hi = (
                    _finite(f"integer feature {f!r} scale min", sc[0]),
                    _finite(f"integer feature {f!r} scale max", sc[1]),
                )
                if not hi > lo:
                    raise UsageError(f"integer feature {f!r}: scale needs min < max, got {list(sc)}")
                integer[i] = (1.0 / (hi - lo), -lo / (hi - lo))
            else:
                integer[i] = (g["step"], g.get("offset", 0.0))
        else:
            integer[i] = (g, 0.0)
    return integer


def _items(m: Any, what: str) -> list[tuple[Any, Any]]:
    """(key, value) pairs of a mapping or of a sequence of pairs / triples (the stored form)."""
    if isinstance(m, Mapping):
        return list(m.items())
    if isinstance(m, (tuple, list)):
        out = []
        for t in m:
            if not isinstance(t, (tuple, list)) or len(t) not in (2, 3):
                raise UsageError(f"{what}: expected a mapping {{feature: ...}}, got {m!r}")
            out.append((t[0], tuple(t[1:]) if len(t) == 3 else t[1]))
        return out
    raise UsageError(f"{what}: expected a mapping {{feature: ...}}, got {m!r}")
