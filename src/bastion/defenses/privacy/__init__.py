"""Differential privacy: DP-SGD training and empirical privacy audits.

- :mod:`.dpsgd`: DP-SGD (Abadi et al. 2016) through Opacus on the one trainer — :class:`DPConfig`,
  :func:`dp_train`, :func:`dp_train_architecture`; the epsilon actually spent comes from Opacus' accountant.
- :mod:`.audit`: the canary audit (:func:`canary_audit`): train with canaries inserted at random, guess which went
  in, turn the guesses into an empirical lower bound on epsilon beside the claimed one.
- :mod:`.epsilon`: the bounds (Steinke, Nasr & Jagielski 2023, one run; Jagielski, Ullman & Oprea 2020,
  Clopper-Pearson over several runs).

Opacus is an optional dependency (``pip install bastion[dp]``): importing this package needs it only when a
function that trains is called.
"""

from __future__ import annotations

from .audit import CANARY_KINDS, CANARY_SCORES, CanarySet, canary_audit, make_canaries, score_canaries
from .dpsgd import (
    ACCOUNTANTS,
    DP_CONFIGS,
    DPConfig,
    DPTraining,
    PoissonSampler,
    dp_config_for,
    dp_fix,
    dp_train,
    dp_train_architecture,
)
from .epsilon import (
    clopper_pearson_epsilon,
    multi_run_audit,
    one_run_audit,
    one_run_epsilon,
    one_run_p_value,
)

__all__ = [
    "ACCOUNTANTS",
    "CANARY_KINDS",
    "CANARY_SCORES",
    "DP_CONFIGS",
    "CanarySet",
    "DPConfig",
    "DPTraining",
    "PoissonSampler",
    "canary_audit",
    "clopper_pearson_epsilon",
    "dp_config_for",
    "dp_fix",
    "dp_train",
    "dp_train_architecture",
    "make_canaries",
    "multi_run_audit",
    "one_run_audit",
    "one_run_epsilon",
    "one_run_p_value",
    "score_canaries",
]
