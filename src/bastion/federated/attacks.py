"""Model-poisoning attacks on federated updates, as pure numpy math (registered in :data:`UPDATE_ATTACKS`).

An attack receives the round's benign updates ``(k, d)`` (flattened client-minus-global weights, one row per
benign client; the attacks from the papers are *omniscient*: they see them) and returns the ``(m, d)`` updates its
``m`` malicious clients send, in the benign updates' dtype. Randomness comes only from the generator passed in.

- ``"sign-flip"`` (:class:`SignFlip`): ``-boost · mean(benign)``, the sign-flipping attack of the Byzantine-robust
  literature (e.g. Li et al., "RSA", AAAI 2019), amplified by ``boost``.
- ``"gaussian"`` (:class:`GaussianNoise`): i.i.d. ``N(0, sigma²)`` coordinates, the "Gaussian attack" of Fang et
  al. (USENIX Security 2020) and Cao et al. (FLTrust, NDSS 2021), sigma 200 as in FLTrust. Not omniscient.
- ``"alie"`` (:class:`ALIE`): "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019): ``mean - z · std``
  per coordinate (std with ddof=0). Without an explicit ``z``, the paper's ``z_max``: with ``n`` clients of which
  ``m`` are malicious, ``s = floor(n/2 + 1) - m`` and ``z = Φ⁻¹((n - s) / n)``. When that is not a finite positive
  number (``s <= 0``: the attackers are (nearly) a majority, or ``(n - s)/n <= 1/2``), ``z = 1.0`` is used.
- ``"ipm"`` (:class:`IPM`): inner-product manipulation (Xie, Koyejo & Gupta, "Fall of Empires", UAI 2019):
  ``-epsilon · mean(benign)``, whose inner product with the true mean is negative.
- ``"min-max"`` / ``"min-sum"`` (:class:`MinMax`, :class:`MinSum`): the AGR-agnostic attacks of Shejwalkar &
  Houmansadr ("Manipulating the Byzantine", NDSS 2021): ``mean + γ·p`` for a perturbation direction ``p``
  (``"unit"``: ``-mean/‖mean‖``, ``"sign"``: ``-sign(mean)``, ``"std"``: ``-std``) and the largest ``γ`` their
  binary search finds such that the malicious update stays as close to the benign ones as they are to each other:

  - min-max: ``max_i ‖m - b_i‖ <= max_{i,j} ‖b_i - b_j‖``;
  - min-sum: ``Σ_i ‖m - b_i‖² <= max_i Σ_j ‖b_i - b_j‖²`` (the paper's equation; their released code compares
    with the *minimum* over ``i`` instead).

  The search is the reference code's: start at ``gamma_init``, step ``gamma_init/2``, step up on success and down
  on failure, halving the step, until the last success is within ``tol`` of the current value (so ``γ`` lies in
  ``[0, 2·gamma_init)``). The distances are computed once (``O(k² d)``, Gram matrix of the centred updates); each
  search step is then ``O(k)``, using ``‖m - b_i‖² = ‖c - b_i‖² + 2γ⟨c - b_i, p⟩ + γ²‖p‖²`` with ``c`` the mean.
  The ``"std"`` direction uses ddof=1 (``torch.std``, as the reference code; ddof=0 with one benign update); its
  scale only rescales ``γ``. The chosen ``γ`` is kept as ``gamma_``.

Data-poisoning attacks (``"label-flip"``, ``"backdoor"``) change a client's training data; the client-training
code implements them, only their names are listed here (:data:`DATA_ATTACKS`, :func:`attack_names`).

    >>> import numpy as np
    >>> benign = np.array([[1.0, 2.0], [3.0, 2.0]])
    >>> craft_update_attack("sign-flip").craft(benign, 2, np.random.default_rng(0)).tolist()
    [[-8.0, -8.0], [-8.0, -8.0]]
    >>> craft_update_attack("alie", z=1.0).craft(benign, 1, np.random.default_rng(0)).tolist()
    [[1.0, 2.0]]
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from scipy.stats import norm

from ..errors import UsageError
from ..registry import Configured, Registry
from .aggregators import validate_updates

__all__ = [
    "ALIE",
    "DATA_ATTACKS",
    "IPM",
    "UPDATE_ATTACKS",
    "GaussianNoise",
    "MinMax",
    "MinSum",
    "SignFlip",
    "UpdateAttack",
    "alie_z",
    "attack_names",
    "craft_update_attack",
]

DATA_ATTACKS: tuple[str, ...] = ("label-flip", "backdoor")
"""Data-poisoning attacks, implemented by the client-training code (listed here for the CLI)."""

_MAX_SEARCH_STEPS = 200  # the step halves each time: 2**-200 of gamma_init is far below any useful tol


def _positive(value: object, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UsageError(f"{name} must be a number > 0 ({hint}), got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"{name} must be a finite number > 0 ({hint}), got {value!r}")
    return number


class UpdateAttack(Configured, abc.ABC):
    """Base class of the update attacks: :meth:`craft` the malicious clients' updates from the benign ones.

    Subclasses take keyword-only constructor arguments (kept as given, as attributes of the same name) and
    implement :meth:`_craft` on validated input; :meth:`craft` checks the arguments and casts the result.
    """

    name: ClassVar[str]
    omniscient: ClassVar[bool] = True

    def craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        """The ``(n_malicious, d)`` updates of the malicious clients, in ``benign``'s dtype.

        Args:
            benign: the round's benign updates ``(k, d)``, k >= 1, finite floats.
            n_malicious: how many malicious clients send an update this round (>= 0).
            rng: the only source of randomness.
        """
        b = validate_updates(benign, "benign updates")
        if b.shape[0] == 0:
            raise UsageError("benign updates must have at least one row: the attack is crafted from them")
        if isinstance(n_malicious, bool) or not isinstance(n_malicious, (int, np.integer)) or n_malicious < 0:
            raise UsageError(f"n_malicious must be an integer >= 0, got {n_malicious!r}")
        if not isinstance(rng, np.random.Generator):
            raise UsageError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
        rows = self._craft(b.astype(np.float64, copy=False), int(n_malicious), rng)
        return np.ascontiguousarray(rows, dtype=b.dtype)

    @abc.abstractmethod
    def _craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        """The malicious rows from validated float64 ``benign`` updates."""


UPDATE_ATTACKS: Registry[type[UpdateAttack]] = Registry("federated attack")
"""Model-poisoning attacks on updates by name (``"sign-flip"``, ``"gaussian"``, ``"alie"``, ``"ipm"``, ...)."""


def _repeat(row: np.ndarray, n: int) -> np.ndarray:
    return np.repeat(row[None, :], n, axis=0)


@UPDATE_ATTACKS.named("sign-flip")
class SignFlip(UpdateAttack):
    """Every malicious update is ``-boost · mean(benign)``.

    Args:
        boost: the amplification (> 0; 1 = the plain flipped mean).
    """

    def __init__(self, *, boost: float = 4.0) -> None:
        _positive(boost, "boost", "the amplification of the flipped mean, e.g. 4")
        self.boost = boost

    def _craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        return _repeat(-float(self.boost) * benign.mean(axis=0), n_malicious)


@UPDATE_ATTACKS.named("gaussian")
class GaussianNoise(UpdateAttack):
    """Every coordinate of every malicious update drawn i.i.d. from ``N(0, sigma²)``.

    Args:
        sigma: the noise standard deviation (> 0; 200 in FLTrust's experiments).
    """

    omniscient: ClassVar[bool] = False

    def __init__(self, *, sigma: float = 200.0) -> None:
        _positive(sigma, "sigma", "the noise standard deviation, e.g. 200")
        self.sigma = sigma

    def _craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, float(self.sigma), size=(n_malicious, benign.shape[1]))


def alie_z(n_clients: int, n_malicious: int) -> float:
    """ALIE's ``z_max`` for ``n_clients`` clients in total, ``n_malicious`` of them malicious:
    ``Φ⁻¹((n - s)/n)`` with ``s = floor(n/2 + 1) - m``; 1.0 where that is not a finite positive number."""
    if n_clients < 1 or not 0 <= n_malicious <= n_clients:
        raise UsageError(f"need 0 <= n_malicious <= n_clients and n_clients >= 1, got {n_malicious} of {n_clients}")
    s = math.floor(n_clients / 2 + 1) - n_malicious
    z = float(norm.ppf((n_clients - s) / n_clients))
    return z if math.isfinite(z) and z > 0 else 1.0


@UPDATE_ATTACKS.named("alie")
class ALIE(UpdateAttack):
    """A Little Is Enough (ALIE): every malicious update is ``mean - z · std`` of the benign updates, per coordinate.

    Args:
        z: how many standard deviations to shift (> 0); None = the paper's ``z_max`` for the round's client
            counts (:func:`alie_z`, with ``n = k + n_malicious``). The value used is kept as ``z_``.
    """

    def __init__(self, *, z: float | None = None) -> None:
        if z is not None:
            _positive(z, "z", "standard deviations to shift, or None for the paper's z_max")
        self.z = z

    def _craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        k = benign.shape[0]
        self.z_ = float(self.z) if self.z is not None else alie_z(k + n_malicious, n_malicious)
        return _repeat(benign.mean(axis=0) - self.z_ * benign.std(axis=0), n_malicious)


@UPDATE_ATTACKS.named("ipm")
class IPM(UpdateAttack):
    """Inner-product manipulation: every malicious update is ``-epsilon · mean(benign)``.

    Args:
        epsilon: the scale (> 0; small values evade distance-based defences, large ones flip the aggregate).
    """

    def __init__(self, *, epsilon: float = 0.5) -> None:
        _positive(epsilon, "epsilon", "the scale of the negated mean, e.g. 0.5")
        self.epsilon = epsilon

    def _craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        return _repeat(-float(self.epsilon) * benign.mean(axis=0), n_malicious)


def _search_gamma(ok: Callable[[float], bool], gamma_init: float, tol: float) -> float:
    """The reference code's search for the largest ``γ`` with ``ok(γ)`` (0.0 when none it tries succeeds)."""
    gamma, step, succ = gamma_init, gamma_init, 0.0
    for _ in range(_MAX_SEARCH_STEPS):
        if abs(succ - gamma) <= tol:
            break
        if ok(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succ


class _AgrAgnostic(UpdateAttack):
    """Shared part of min-max and min-sum: the direction, the precomputed distances and the search."""

    _PERTURBATIONS: ClassVar[tuple[str, ...]] = ("unit", "sign", "std")

    def __init__(self, *, perturbation: str = "std", gamma_init: float = 50.0, tol: float = 1e-5) -> None:
        if perturbation not in self._PERTURBATIONS:
            raise UsageError(f"perturbation must be one of {', '.join(self._PERTURBATIONS)}, got {perturbation!r}")
        _positive(gamma_init, "gamma_init", "where the search for gamma starts, e.g. 50")
        _positive(tol, "tol", "the search's stopping tolerance, e.g. 1e-5")
        self.perturbation = perturbation
        self.gamma_init = gamma_init
        self.tol = tol

    def direction(self, benign: np.ndarray) -> np.ndarray:
        """The perturbation direction ``p`` for these benign updates (zero where it is undefined)."""
        mean = benign.mean(axis=0)
        if self.perturbation == "unit":
            length = float(np.linalg.norm(mean))
            return -mean / length if length > 0 else np.zeros_like(mean)
        if self.perturbation == "sign":
            return -np.sign(mean)
        return -benign.std(axis=0, ddof=1 if benign.shape[0] > 1 else 0)

    @abc.abstractmethod
    def _feasible(
        self, base: np.ndarray, cross: np.ndarray, p2: float, pairwise: np.ndarray
    ) -> Callable[[float], bool]:
        """``ok(γ)`` from ``‖c - b_i‖²`` (base), ``⟨c - b_i, p⟩`` (cross), ``‖p‖²`` and the benign pairwise ``‖b_i - b_j‖²``."""

    def _craft(self, benign: np.ndarray, n_malicious: int, rng: np.random.Generator) -> np.ndarray:
        mean = benign.mean(axis=0)
        p = self.direction(benign)
        centred = mean - benign  # rows c - b_i
        base = np.einsum("ij,ij->i", centred, centred)
        gram = centred @ centred.T
        pairwise = np.maximum(base[:, None] + base[None, :] - 2.0 * gram, 0.0)
        np.fill_diagonal(pairwise, 0.0)
        ok = self._feasible(base, centred @ p, float(p @ p), pairwise)
        self.gamma_ = _search_gamma(ok, float(self.gamma_init), float(self.tol))
        return _repeat(mean + self.gamma_ * p, n_malicious)


@UPDATE_ATTACKS.named("min-max")
class MinMax(_AgrAgnostic):
    """Min-max: the largest shift whose distance to every benign update is within the benign updates' diameter.

    Args:
        perturbation: ``"unit"``, ``"sign"`` or ``"std"`` (the direction ``p``, see the module docstring).
        gamma_init: where the search starts (the result lies in ``[0, 2·gamma_init)``).
        tol: the search stops when the last success is within ``tol`` of the value tried.
    """

    def _feasible(
        self, base: np.ndarray, cross: np.ndarray, p2: float, pairwise: np.ndarray
    ) -> Callable[[float], bool]:
        threshold = float(pairwise.max())
        return lambda gamma: float(np.max(base + 2.0 * gamma * cross + gamma * gamma * p2)) <= threshold


@UPDATE_ATTACKS.named("min-sum")
class MinSum(_AgrAgnostic):
    """Min-sum: the largest shift whose summed squared distance to the benign updates is within the largest such
    sum of a benign update. Arguments as :class:`MinMax`."""

    def _feasible(
        self, base: np.ndarray, cross: np.ndarray, p2: float, pairwise: np.ndarray
    ) -> Callable[[float], bool]:
        threshold = float(pairwise.sum(axis=1).max())
        k = base.shape[0]
        return lambda gamma: float(np.sum(base + 2.0 * gamma * cross) + k * gamma * gamma * p2) <= threshold


def craft_update_attack(name: str, **params: Any) -> UpdateAttack:
    """Build the registered update attack ``name`` with ``params``; an unknown parameter is a :class:`UsageError`
    listing the accepted ones, e.g. ``craft_update_attack("min-max", perturbation="sign")``."""
    cls = UPDATE_ATTACKS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UsageError(
            f"unknown parameter(s) {', '.join(unknown)} for attack {cls.name!r}: "
            f"it accepts {', '.join(accepted) if accepted else 'no parameters'}"
        )
    return cls(**params)


def attack_names() -> list[str]:
    """Every federated attack name, data (:data:`DATA_ATTACKS`) and update (:data:`UPDATE_ATTACKS`), sorted."""
    return sorted({*DATA_ATTACKS, *UPDATE_ATTACKS.names()})
