"""Audit profiles: which probes run, on how many inputs, with which budgets.

``quick`` is for a first look and CI (minutes on a laptop CPU), ``standard`` is the evaluation to
report (AutoAttack-strength white-box ensemble on 1,000 inputs), ``thorough`` spends several times
more on every probe. Each profile maps probe names, in run order, to parameter overrides of the
probe's defaults; ``n`` is the number of test inputs audited (0: all of them). Probes that do not
apply to a model (``certification`` on a model that is not a ``SmoothedClassifier``, ``detection``
without a ``DetectingClassifier``, ``poisoning`` on a model whose architecture bastion cannot rebuild) are
skipped with the reason. ``poisoning`` retrains the model's architecture once per attack and rate, so it is in
``standard`` and ``thorough`` only (about 20 s a training for mnist-cnn on 2 CPU cores); so is ``backdoor``
(Neural Cleanse reverses a trigger for every class: minutes for mnist-cnn on 2 CPU cores). ``extraction`` trains a
copy of the model at every query budget: ``quick`` steals with budgets up to 500 on probabilities only, with 15
epochs (about 5 s for digits-mlp, 25 s for mnist-cnn, at one thread), ``standard`` up to 2,000 queries (capped by the
training split, the attacker's pool) on probabilities and on labels alone, ``thorough`` up to 10,000. ``privacy``
retrains the model's architecture with canaries (its recorded DP-SGD recipe, or the standard one without DP) to
bound epsilon from below: ``standard`` with 500 canaries and one training, ``thorough`` 1,000 and two (both capped
at half the training split); it is not in ``quick``, as a training adds 25-40 s for mnist-cnn on mnist5k at one
thread (``{"canaries": 200, "runs": 1}`` is its quick setting in a custom profile). ``federated`` trains the
architecture by federated learning in one Flower simulation (the ``federated`` extra), attack-free and under each
attack, for each aggregator: 20 federated runs of 10 clients and 10 rounds, in ``thorough`` only (``--profile
thorough --probes federated`` runs it alone; its defaults, 12 runs of 5 rounds, suit a custom profile).
``encrypted`` (the ``he`` extra) compiles the model for CKKS and runs encrypted inference on 200 (``standard``) or
1,000 (``thorough``) inputs: under a second for ``digits-logreg``, about a minute for ``mnist-he-cnn``; models with
ReLU or max pooling are skipped with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

__all__ = ["PROFILES", "Profile", "default_eps", "get_profile"]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    n: int
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        "quick",
        "a first look in a minute or two on a CPU (smaller budgets, 500 inputs)",
        500,
        {
            "model": {},
            "whitebox": {"pgd_steps": 40, "apgd_steps": 50, "apgd_t_targets": 3, "extra_restarts": 1},
            "minimum-norm": {"n_deepfool": 500, "n_cw": 50, "cw_iterations": 100},
            "blackbox": {"n_square": 200, "square_queries": 1000, "n_hsj": 20, "hsj_queries": 2000},
            "noise": {"n": 500, "queries": 100},
            "patch": {"steps": 300, "fit_images": 2000},
            "certification": {"n_certify": 100, "n": 1000, "pgd_inputs": 10, "pgd_steps": 10, "n_predict": 500},
            "detection": {"n": 200, "pgd_steps": 40, "adaptive_steps": 50, "adaptive_restarts": 3},
            "membership": {"attacks": ["loss", "modified-entropy"], "references": 0},
            "inversion": {"steps": 300},
            "extraction": {"budgets": [100, 250, 500], "labels_only_too": False, "epochs": 15, "n_transfer": 100},
        },
    ),
    "standard": Profile(
        "standard",
        "the evaluation to report: AutoAttack-strength ensemble on 1,000 inputs",
        1000,
        {
            "model": {},
            "whitebox": {"pgd_steps": 40, "apgd_steps": 100, "apgd_t_targets": 9, "extra_restarts": 2},
            "minimum-norm": {"n_deepfool": 1000, "n_cw": 100},
            "blackbox": {"n_square": 500, "square_queries": 1000, "n_hsj": 50, "hsj_queries": 2500},
            "noise": {"n": 1000, "queries": 100},
            "patch": {"steps": 500, "fit_images": 2000},
            "certification": {"n_certify": 500, "n": 10_000, "pgd_inputs": 20, "pgd_steps": 20, "n_predict": 1000},
            "detection": {"n": 500, "pgd_steps": 40, "adaptive_steps": 100, "adaptive_restarts": 3},
            "poisoning": {"attacks": {"badnets": [0.005, 0.01, 0.02, 0.05], "label-flip": [0.05, 0.2]}},
            "backdoor": {"n": 500},
            "membership": {"attacks": ["loss", "modified-entropy", "lira", "rmia"], "references": 8},
            "privacy": {"canaries": 500, "runs": 1},
            "inversion": {},
            "extraction": {"budgets": [100, 250, 500, 1000, 2000]},
            "encrypted": {"n": 200},
        },
    ),
    "thorough": Profile(
        "thorough",
        "several times the standard budgets, on every test input",
        0,
        {
            "model": {},
            "whitebox": {
                "pgd_steps": 100,
                "pgd_restarts": 2,
                "apgd_steps": 200,
                "apgd_t_targets": 9,
                "extra_restarts": 4,
            },
            "minimum-norm": {"n_deepfool": 100_000, "n_cw": 500, "cw_search_steps": 9},
            "blackbox": {"n_square": 1000, "square_queries": 5000, "n_hsj": 200, "hsj_queries": 5000},
            "noise": {"n": 100_000, "queries": 1000},
            "patch": {"steps": 2000, "fit_images": 4000},
            "certification": {
                "n_certify": 1000,
                "n": 100_000,
                "pgd_inputs": 50,
                "pgd_steps": 50,
                "pgd_restarts": 2,
                "n_predict": 10_000,
            },
            "detection": {"n": 1000, "pgd_steps": 40, "adaptive_steps": 200, "adaptive_restarts": 6},
            "poisoning": {
                "attacks": {
                    "badnets": [0.005, 0.01, 0.02, 0.05, 0.1],
                    "blend": [0.01, 0.05],
                    "label-flip": [0.05, 0.1, 0.2],
                }
            },
            "backdoor": {"n": 1000},
            "membership": {
                "attacks": ["loss", "modified-entropy", "lira", "lira-offline", "rmia", "shadow"],
                "references": 16,
            },
            "privacy": {"canaries": 1000, "runs": 2},
            "inversion": {"steps": 2000},
            "extraction": {"budgets": [100, 250, 500, 1000, 2000, 5000, 10_000], "n_transfer": 1000},
            "encrypted": {"n": 1000},
            "federated": {
                "rounds": 10,
                "attacks": ["sign-flip", "alie", "label-flip", "backdoor"],
                "aggregators": ["fedavg", "median", "trimmed-mean", "fltrust"],
            },
        },
    ),
}


def get_profile(name: str) -> Profile:
    key = str(name).strip().lower()
    if key not in PROFILES:
        raise UsageError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[key]


def default_eps(norm: str, bounds: tuple[float, float], input_shape: tuple[int, ...]) -> list[float]:
    """eps values audited when none are given, in input units.

    Linf: 5%, 10%, 20% and 30% of the input range (0.3 is MNIST's customary budget). L2: the same
    per-coordinate scale times sqrt(d) / 10 — for 28x28 images about 0.56, 1.1, 2.0 and 2.8.
    """
    span = float(bounds[1]) - float(bounds[0])
    if norm == "linf":
        fractions = [0.05, 0.1, 0.2, 0.3]
        return [round(f * span, 6) for f in fractions]
    d = math.prod(input_shape)
    fractions = [0.02, 0.04, 0.07, 0.1]
    return [round(f * span * math.sqrt(d), 4) for f in fractions]
