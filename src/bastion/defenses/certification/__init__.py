"""Certified robustness by randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial
Robustness via Randomized Smoothing", ICML).

The smoothed classifier g(x) = argmax_c P[f(x + delta) = c], delta ~ N(0, sigma^2 I), of any base
classifier f comes with a guarantee: when the top class A has probability at least p_lower > 1/2,
g predicts A on the whole L2 ball of radius sigma * Phi^-1(p_lower) around x. CERTIFY estimates
p_lower by Monte Carlo with a Clopper-Pearson bound, so each returned certificate holds with
probability at least 1 - alpha over the sampling noise, and PREDICT returns a wrong class (other than
g's) with probability at most alpha; both may abstain.

Assumptions: an L2 threat model (nothing is said about Linf beyond the L2 ball it contains); fresh
noise that the attacker cannot predict or choose (``secure=True`` seeds every batch from the
operating system's CSPRNG); a deterministic base classifier; the certificate is about g, not f, and
only covers the inputs it was computed on. The radii are in input units: normalisation belongs
inside the base model.

- :class:`SmoothedClassifier`: the wrapper (a bastion Classifier): ``certify``, ``predict``, and a
  differentiable ``logits`` (Salman et al. 2019's soft smoothed classifier) for adaptive attacks.
- :func:`train_with_noise`: Gaussian-noise training of the base model (Cohen et al., section 4), on the one
  trainer; :func:`gaussian_harden`: that training on a classifier and a dataset, with the test accuracy clean
  and under the noise (:func:`accuracy_under_noise`) in its record.
- :func:`clopper_pearson_lower`, :func:`certified_radius`, :func:`binomial_pvalue`: the pure statistics.
"""

from __future__ import annotations

from .bounds import binomial_pvalue, certified_radius, clopper_pearson_lower
from .noise_training import accuracy_under_noise, gaussian_harden, train_with_noise
from .smoothing import ABSTAIN, SmoothedClassifier

__all__ = [
    "ABSTAIN",
    "SmoothedClassifier",
    "accuracy_under_noise",
    "binomial_pvalue",
    "certified_radius",
    "clopper_pearson_lower",
    "gaussian_harden",
    "train_with_noise",
]
