"""Certified prediction by randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial
Robustness via Randomized Smoothing"), and the soft smoothed classifier of Salman et al. 2019
("Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers") for attacks.

Given a base classifier f, the smoothed classifier is

    g(x) = argmax_c P[f(x + delta) = c],   delta ~ N(0, sigma^2 I).

Guarantee (Theorem 1): if class A has probability p_A >= p_lower > 1/2 under the noise, then
g(x + e) = A for every ||e||_2 < sigma * Phi^-1(p_lower). :meth:`SmoothedClassifier.certify` is
Cohen's CERTIFY: n0 noisy samples select the top class, n *separate* samples count it, p_lower is the
one-sided Clopper-Pearson bound at level 1 - alpha; with probability at least 1 - alpha over the
noise, a returned (class, radius) is correct for g. :meth:`SmoothedClassifier.predict` is PREDICT: the
top class of n samples unless a two-sided binomial test of the top two counts fails at level alpha,
in which case it abstains; the probability of returning a class other than g(x) is at most alpha.

Threat model: an L2-bounded evasion attacker who knows the model but not the noise drawn at
prediction time. Assumptions: the noise is fresh and independent of the input the attacker chose
(the secure mode makes it unpredictable); the base classifier is deterministic (``attack_mode``);
the Monte-Carlo estimate ignores floating-point effects on the Gaussian sampler (Voracek & Hein
2022 show those can matter for tiny radii).

Shapes: inputs (N, *input_shape) inside ``bounds``; noisy samples are *not* clipped to the bounds
(Cohen's protocol; clipping would be part of the base classifier). Labels (N,) int64 with
:data:`ABSTAIN` = -1 for an abstention, radii (N,) float64.
"""

from __future__ import annotations

import math
import secrets
import warnings
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...models.torch import TorchClassifier
from ...models.wrapped import WrappedClassifier
from ...seeding import derive_seed, make_generator
from .bounds import binomial_pvalue, certified_radius, clopper_pearson_lower

__all__ = ["ABSTAIN", "ACCELERATOR_BATCH", "CPU_BATCH", "SmoothedClassifier"]

ABSTAIN = -1
CPU_BATCH = 64
ACCELERATOR_BATCH = 1000
"""The label :meth:`SmoothedClassifier.certify` and :meth:`SmoothedClassifier.predict` return when they abstain."""


class _DefaultSeed(int):
    """The default seed 0, told apart from a seed the caller passed (secure mode refuses those)."""

    def __repr__(self) -> str:
        return "0"


_DEFAULT_SEED = _DefaultSeed(0)


def _whole(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class SmoothedClassifier(WrappedClassifier):
    """Cohen et al.'s smoothed classifier around ``base``, itself a :class:`~bastion.models.Classifier`.

    Args:
        base: the classifier to smooth (ideally trained with Gaussian noise of the same ``sigma``, see
            :func:`~bastion.defenses.certification.train_with_noise`); it is not modified.
        sigma: standard deviation of the Gaussian noise, in input units (normalisation belongs inside
            the base model, so radii are in input space).
        n0: noise samples that select the top class in :meth:`certify` (Cohen: 100).
        n: noise samples that estimate its probability in :meth:`certify`, and that :meth:`predict`
            counts (Cohen: 100,000).
        alpha: failure probability of a certificate or a prediction (Cohen: 0.001).
        batch_size: most noisy samples passed to the base model at once; memory does not grow with n.
            ``None``: for counting (:meth:`certify`, :meth:`predict`) :data:`CPU_BATCH` (64) on a CPU, where
            small batches stay in the caches (on a 2-core CPU the zoo's MNIST CNN runs 4x faster per
            sample at 64 than at 1,000), :data:`ACCELERATOR_BATCH` (1,000) on a GPU; for the
            differentiable :meth:`logits` 1,000 everywhere. With a seeded generator the noise, and so the
            counts, depend on the batch size: pass it explicitly to reproduce a run on other hardware.
        n_logits: noise draws per input in :meth:`logits` (the differentiable soft classifier).
        secure: draw every batch of noise from a generator seeded by the operating system's CSPRNG
            (``secrets.randbits(64)``), so nobody can predict it; refuses ``seed`` and ``generator``.
        seed: seed of the noise generator in the default mode (``None``: nondeterministic). The same
            seed and the same sequence of calls give the same results. Secure mode takes none: leave it
            out (an explicit ``seed=0`` is refused there too).
        generator: a ``torch.Generator`` to draw the noise from instead (on the inputs' device).
        compile: run the base model's forward passes in :meth:`certify` and :meth:`predict` through
            ``torch.compile`` (a torch base only; needs a C++ compiler on a CPU). Every batch is padded
            to ``batch_size`` so it compiles once (seconds, cached on disk by torch); the scores are the
            eager model's up to floating-point rounding. If compilation fails, a ``RuntimeWarning``
            says why and the eager model is used.

    Secure mode: each batch of noise comes from a new ``torch.Generator`` (Mersenne Twister on a CPU,
    Philox on a GPU) seeded with 64 bits from :mod:`secrets`, the operating system's CSPRNG, and
    discarded after the batch. Exploiting the noise means choosing an input for the particular draws,
    which needs the seed: a fresh 64-bit secret per batch, never revealed (only counts and labels leave
    the process), no state shared between batches — so the generator not being a CSPRNG itself (its
    state follows from enough *observed* outputs) does not help an attacker. Opacus' secure mode draws
    every number from a CSPRNG (torchcsprng); this is as unpredictable under the threat above and costs
    nothing. A seed or generator would make the noise predictable, so secure mode refuses them.

    ``n_queries`` counts noisy samples: n0 + n per input in :meth:`certify`, n in :meth:`predict`,
    ``n_logits`` in :meth:`logits` (the base model counts its own). ``white_box`` is the base's:
    :meth:`logits` is differentiable when the base's is, so gradient attacks (which are EOT here:
    the scores are an average over noise) attack the smoothed model end to end.
    """

    scores_are_expectation = True  # logits() already averages over noise: EOT is built in

    def __init__(
        self,
        base: Classifier,
        sigma: float,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int | None = None,
        n_logits: int = 32,
        secure: bool = False,
        seed: int | None = _DEFAULT_SEED,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(base, output="logits")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise UsageError(f"sigma (the noise level) must be a finite number > 0, e.g. 0.25, got {sigma!r}")
        _whole("n0", n0)
        _whole("n", n)
        if batch_size is not None:
            _whole("batch_size", batch_size)
        _whole("n_logits", n_logits)
        if not isinstance(compile, bool):
            raise UsageError(f"compile must be True or False, got {compile!r}")
        if compile and not isinstance(base, TorchClassifier):
            raise UsageError(
                f"compile=True compiles a torch module with torch.compile; the base is a "
                f"{type(base).__name__}: leave compile off"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
            raise UsageError(
                f"alpha (the failure probability) must be strictly between 0 and 1, e.g. 0.001, got {alpha!r}"
            )
        if not isinstance(secure, bool):
            raise UsageError(f"secure must be True or False, got {secure!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UsageError(f"seed must be an integer or None, got {seed!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise UsageError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if secure and (generator is not None or not (seed is None or isinstance(seed, _DefaultSeed))):
            given = "generator=" if generator is not None else f"seed={seed!r}"
            raise UsageError(
                f"secure=True draws its noise from a fresh CSPRNG-seeded generator and takes no seed or "
                f"generator: remove {given} (or use secure=False for reproducible runs)"
            )
        self.sigma = sigma
        self.n0 = n0
        self.n = n
        self.alpha = alpha
        self.batch_size = batch_size
        self.n_logits = n_logits
        self.secure = secure
        self.seed = seed
        self.generator = generator
        self.compile = compile
        self._compiled: Any = None
        self._gens: dict[torch.device, torch.Generator] = {}

    def _batch(self, device: torch.device) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH if device.type == "cpu" else ACCELERATOR_BATCH

    def _top(self, noisy: Tensor, rows: int) -> Tensor:
        """The base model's top class for the first ``rows`` rows of ``noisy`` (the whole buffer goes
        through the compiled model, so every call has one shape)."""
        if self.compile and self._compiled is not False:
            base = self.base
            assert isinstance(base, TorchClassifier)
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(base.module, dynamic=False)
                if rows < noisy.shape[0]:
                    noisy[rows:].zero_()
                scores = base._unwrap(self._compiled(noisy))[:rows]
            except Exception as exc:  # noqa: BLE001 - any compiler failure: say why, run eagerly
                self._compiled = False
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc).strip()[:300]}); "
                    "SmoothedClassifier runs the eager model instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                base.n_queries += rows
                return scores.argmax(dim=1)
        return self.base.logits(noisy[:rows]).argmax(dim=1)

    # -- noise ------------------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        """The generator one batch of noise is drawn from (a fresh CSPRNG-seeded one in secure mode)."""
        if self.secure:
            return torch.Generator(device=device).manual_seed(secrets.randbits(64))
        if self.generator is not None:
            if self.generator.device.type != device.type:
                raise UsageError(
                    f"the generator is on {self.generator.device} but the inputs are on {device}: "
                    "pass a generator on the inputs' device"
                )
            return self.generator
        g = self._gens.get(device)
        if g is None:
            g = self._gens[device] = make_generator(self.seed, None, device)
        return g

    def _keyed_counts(self, x: Tensor, num: int, keys: list[int], stage: str) -> Tensor:
        """:meth:`_counts` input by input, input i's noise from a generator of its own seeded from (seed, ``stage``,
        ``keys[i]``), so its counts do not depend on the inputs counted with it (fresh CSPRNG seeds in secure mode
        or with ``seed=None``)."""
        if self.generator is not None:
            raise UsageError("keys derive each input's noise from seed: use seed=, not generator=, to pass keys")
        seed = None if self.secure else self.seed
        seeds = [secrets.randbits(64) if seed is None else derive_seed(seed, "smoothing", stage, k) for k in keys]
        gens = [torch.Generator(device=x.device).manual_seed(s) for s in seeds]
        rows = [self._counts(x[i : i + 1], num, None, g) for i, g in enumerate(gens)]
        return torch.cat(rows) if rows else torch.zeros(0, self.n_classes, dtype=torch.long, device=x.device)

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self._generator(like.device), device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def _counts(
        self, x: Tensor, num: int, batch_size: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Top-class counts (N, n_classes) of the base model over ``num`` noisy copies of each input.

        The N * num samples are enumerated input-major and cut into batches of at most ``batch_size``,
        so a batch holds several inputs when num < batch_size and memory does not depend on num. One
        buffer is reused for every batch (the base model must not keep its input, as none does); the
        noise is drawn into it already scaled, and each input is added to its run of rows by broadcast
        (a gather only when a batch holds many inputs): two passes over the batch besides the model.
        ``generator``: draw from it instead of the classifier's own."""
        m, c = x.shape[0], self.n_classes
        step = self._batch(x.device) if batch_size is None else batch_size
        counts = torch.zeros(m, c, dtype=torch.long, device=x.device)
        total = m * num
        buf = x.new_empty((step if self.compile else min(step, total), *x.shape[1:]))
        for start in range(0, total, step):
            stop = min(start + step, total)
            first, last = start // num, (stop - 1) // num
            gen = generator if generator is not None else self._generator(x.device)
            noisy = buf[: stop - start].normal_(0.0, float(self.sigma), generator=gen)
            owner = torch.arange(start, stop, device=x.device) // num
            if last - first < 8:
                for i in range(first, last + 1):
                    noisy[max(start, i * num) - start : min(stop, (i + 1) * num) - start].add_(x[i])
            else:
                noisy.add_(x[owner])
            top = self._top(buf, stop - start)
            span = last - first + 1
            counts[first : first + span] += torch.bincount((owner - first) * c + top, minlength=span * c).view(span, c)
        return counts

    # -- Cohen's CERTIFY and PREDICT -----------------------------------------------------------------
    def certify(
        self,
        x: Tensor,
        *,
        n0: int | None = None,
        n: int | None = None,
        alpha: float | None = None,
        return_counts: bool = False,
        keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Cohen's CERTIFY on each input: (labels (N,) int64, radii (N,) float64[, counts (N,) int64]).

        n0 samples select the top class c_A; n separate samples count it (n_A, returned as ``counts``);
        p_lower = Clopper-Pearson lower bound of n_A / n at level 1 - alpha. If p_lower < 1/2 the label
        is :data:`ABSTAIN` (-1) and the radius 0.0, else the label is c_A and the radius
        sigma * Phi^-1(p_lower). With probability >= 1 - alpha (per input, over the noise) the smoothed
        classifier predicts c_A everywhere within that L2 radius. ``n0``, ``n``, ``alpha`` override the
        constructor's for this call (smaller budgets give smaller radii, never unsound ones).

        ``keys`` (N,) integers (e.g. the inputs' indices in the dataset): each input draws its noise from its own
        generator seeded from (seed, key), so its certificate does not depend on which inputs are certified with
        it — what lets :func:`bastion.scale.certify_sharded` split a dataset over workers and get the same
        certificates. Without keys, one generator serves the whole call (batches may span inputs).
        """
        n0, n, alpha = self._budget(n0, n, alpha)
        validate_inputs(self, x)
        x = x.detach()
        if keys is not None:
            keys = torch.as_tensor(keys).flatten()
            if keys.numel() != x.shape[0] or keys.is_floating_point():
                raise UsageError(f"keys must be {x.shape[0]} integers, one per input, got {tuple(keys.shape)}")
        with self.base.attack_mode():
            self.n_queries += int(x.shape[0]) * (n0 + n)
            if keys is None:
                selected = self._counts(x, n0).argmax(dim=1)
                full = self._counts(x, n)
            else:
                selected = self._keyed_counts(x, n0, keys.tolist(), "select").argmax(dim=1)
                full = self._keyed_counts(x, n, keys.tolist(), "estimate")
            counts_a = full.gather(1, selected[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(counts_a, n, alpha)
        certified = p_lower >= 0.5
        radii = torch.where(
            certified, certified_radius(p_lower.clamp_min(0.5), float(self.sigma)), torch.zeros_like(p_lower)
        )
        labels = torch.where(certified.to(x.device), selected, torch.full_like(selected, ABSTAIN))
        radii = radii.to(x.device)
        return (labels, radii, counts_a) if return_counts else (labels, radii)

    def predict(
        self, x: Tensor, batch_size: int | None = None, *, n: int | None = None, alpha: float | None = None
    ) -> Tensor:
        """Cohen's PREDICT: labels (N,) int64, :data:`ABSTAIN` (-1) where the smoothed classifier abstains.

        Counts the base model's top class over n noisy samples; returns the most frequent class when
        the two-sided binomial test of the top two counts rejects a tie at level alpha, else abstains.
        The probability of returning a class other than the smoothed classifier's g(x) is at most alpha.
        An abstention is never the true label: accuracy and attack success count it as not correct.
        ``batch_size`` (noisy samples per base call), ``n`` and ``alpha`` override the constructor's.
        """
        _, n, alpha = self._budget(None, n, alpha)
        if batch_size is not None:
            _whole("batch_size", batch_size)
        validate_inputs(self, x)
        with self.base.attack_mode():
            self.n_queries += int(x.shape[0]) * n
            counts = self._counts(x.detach(), n, batch_size)
        top2 = counts.topk(2, dim=1)
        pvalue = binomial_pvalue(top2.values[:, 0].cpu(), top2.values[:, 1].cpu()).to(x.device)
        return torch.where(pvalue <= alpha, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], ABSTAIN))

    def _budget(self, n0: int | None, n: int | None, alpha: float | None) -> tuple[int, int, float]:
        n0 = self.n0 if n0 is None else _whole("n0", n0)
        n = self.n if n is None else _whole("n", n)
        if alpha is None:
            alpha = self.alpha
        elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
            raise UsageError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
        return n0, n, float(alpha)

    # -- the differentiable soft smoothed classifier ------------------------------------------------------
    @property
    def queries_per_input(self) -> int:
        """``n_logits``: :meth:`logits` counts one query per noise draw."""
        return self.n_logits

    def _scores(self, x: Tensor) -> Tensor:
        """What :meth:`logits` returns: log-probabilities (N, n_classes) of the soft smoothed classifier,
        log E[softmax(f(x + delta))] — the log of the mean base softmax over ``n_logits`` noise draws (Salman
        et al.'s soft classifier); differentiable when the base is. These are logits (their softmax is the
        smoothed probabilities), so ``output`` is 'logits'."""
        m, d = x.shape[0], self.n_logits
        # with gradients, larger passes win on a CPU too (measured: 2x faster at 1,000 than at 64)
        step = self.batch_size if self.batch_size is not None else ACCELERATOR_BATCH
        per_pass = max(1, step // d)  # inputs per pass: per_pass * d <= batch_size when d <= batch_size
        draws = min(d, step)
        outs = []
        for i in range(0, m, per_pass):
            xb = x[i : i + per_pass]
            k = xb.shape[0]
            pieces = []
            for j in range(0, d, draws):
                r = min(draws, d - j)
                rep = xb.repeat_interleave(r, dim=0)
                s = self.base.logits(rep + self.sigma * self._noise(rep))
                if self.base.output == "probabilities":
                    s = s.clamp_min(1e-12).log()
                pieces.append(torch.log_softmax(s, dim=1).view(k, r, -1))
            outs.append(torch.logsumexp(torch.cat(pieces, dim=1), dim=1) - math.log(d))
        return torch.cat(outs) if outs else x.new_zeros(0, self.n_classes)

    @property
    def base(self) -> Classifier:
        """The base classifier f (the same as :attr:`wrapped`)."""
        return self.wrapped

    def __repr__(self) -> str:
        rng = (
            "secure=True"
            if self.secure
            else f"secure=False, seed={self.seed!r}"
            + (", generator=<torch.Generator>" if self.generator is not None else "")
        )
        return (
            f"SmoothedClassifier({self.base!r}, sigma={self.sigma!r}, n0={self.n0!r}, n={self.n!r}, "
            f"alpha={self.alpha!r}, batch_size={self.batch_size!r}, n_logits={self.n_logits!r}, {rng}"
            + (", compile=True)" if self.compile else ")")
        )
