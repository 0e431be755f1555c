"""The empirical privacy audit: train with canaries, guess which went in, bound epsilon from below.

A claimed epsilon is the accountant's arithmetic over what the code is *supposed* to do; a missing noise call or a
wrong sampling rate leaves it unchanged. The audit measures what the training actually leaks:

1. ``canaries`` records are made unusual — **mislabelled** training records (a random wrong label) or
   **out-of-distribution** inputs (uniform noise in the data's bounds, a random label) — and each is inserted into
   the training set independently with probability 1/2; the other training records are always in;
2. the model is trained once with the recipe under audit (:func:`bastion.defenses.privacy.dp_train`);
3. every canary is scored by a membership attack on the trained model (``loss``: the negated cross-entropy on
   the canary's label, Yeom et al. 2018; ``confidence``; ``logit``: LiRA's logit-scaled confidence; ``lira``:
   online LiRA, Carlini et al. 2022 — that statistic against reference models each trained on its own random
   half of the canaries);
4. the guesses become a lower bound on epsilon that holds at ``confidence``: Steinke, Nasr & Jagielski 2023's
   one-run bound, and with ``runs >= 2`` the Clopper-Pearson bound of Jagielski, Ullman & Oprea 2020 across
   runs as well (:mod:`.epsilon`). Canaries of several runs are pooled for the one-run bound: each canary
   appears in one run only, so the runs together are one algorithm, as private in each canary as one run.

A model trained with DP at epsilon cannot give a bound above epsilon except with probability 1 - confidence;
a bound above the claim is a **violation** (a bug in the training or the accounting). The control
(``config=None``) is the architecture's standard non-private recipe (``bastion train``'s, no clipping, no noise),
whose bound shows what the audit can detect on this data; a DP config with ``noise_multiplier=0`` audits the DP
recipe with its noise removed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import metrics
from ...data.dataset import Dataset
from ...errors import UsageError
from .dpsgd import DPConfig, dp_train_architecture

__all__ = ["CANARY_KINDS", "CANARY_SCORES", "CanarySet", "canary_audit", "make_canaries", "score_canaries"]

CANARY_KINDS = ("mislabel", "ood")
CANARY_SCORES = ("loss", "confidence", "logit", "lira")


@dataclass
class CanarySet:
    """One run's training set: ``x``, ``y`` (the base records then the included canaries), and the canaries
    (``canary_x``, ``canary_y``: every canary, in or out) with ``included`` (m,) bool, the truth."""

    x: Tensor
    y: Tensor
    canary_x: Tensor
    canary_y: Tensor
    included: Tensor


def make_canaries(data: Dataset, m: int, *, kind: str = "mislabel", seed: int = 0) -> CanarySet:
    """Draw ``m`` canaries from ``data``'s training split (seeded) and include each with probability 1/2.

    The records a canary was made from leave the training set (a mislabelled canary never sits beside its
    correctly labelled original)."""
    n, k = int(data.x_train.shape[0]), int(data.n_classes)
    if kind not in CANARY_KINDS:
        raise UsageError(f"--canary-kind: choose one of {', '.join(CANARY_KINDS)}, got {kind!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise UsageError(f"--canaries must be a whole number >= 2, got {m!r}")
    if m > n // 2:
        raise UsageError(
            f"--canaries {m} is more than the data can hold: {data.name} has {n} training records and at most "
            f"half of them ({n // 2}) can be canaries; use --canaries {n // 2} or fewer"
        )
    if k < 2:
        raise UsageError("canaries need labelled data of at least 2 classes")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    chosen, base = perm[:m], perm[m:].sort().values
    wrong = torch.randint(1, k, (m,), generator=g)
    if kind == "mislabel":
        cx, cy = data.x_train[chosen].clone(), (data.y_train[chosen] + wrong) % k
    else:
        lo, hi = data.bounds
        cx = lo + (hi - lo) * torch.rand((m, *data.x_train.shape[1:]), generator=g)
        cy = torch.randint(0, k, (m,), generator=g)
    included = torch.rand(m, generator=g) < 0.5
    x = torch.cat([data.x_train[base], cx[included]]).to(data.x_train.dtype)
    y = torch.cat([data.y_train[base], cy[included]])
    return CanarySet(x, y, cx.to(data.x_train.dtype), cy, included)


@torch.no_grad()
def score_canaries(module: nn.Module, x: Tensor, y: Tensor, score: str = "loss") -> Tensor:
    """Membership scores (m,) float64 of the canaries ``(x, y)`` on ``module`` (higher = more likely in); ``lira``
    is the ``logit`` statistic here, calibrated per canary by reference models in :func:`canary_audit`."""
    if score not in CANARY_SCORES:
        raise UsageError(f"--score: choose one of {', '.join(CANARY_SCORES)}, got {score!r}")
    module.eval()
    logits = torch.cat([module(x[i : i + 1000]) for i in range(0, x.shape[0], 1000)]).double()
    logp = F.log_softmax(logits, dim=1)
    lp_y = logp.gather(1, y[:, None]).squeeze(1)
    if score == "loss":
        return lp_y
    if score == "confidence":
        return lp_y.exp()
    others = logp.clone()
    others.scatter_(1, y[:, None], -math.inf)
    return lp_y - torch.logsumexp(others, dim=1)


def _membership(scores: Tensor, member: Tensor) -> dict[str, Any]:
    """AUC and TPR at 0.1 % / 1 % FPR of a membership score (the numbers every privacy report quotes)."""
    s, m = scores.numpy(), member.numpy().astype(bool)
    return {
        "auc": metrics.roc_auc(m, s),
        "tpr_at_fpr": {f"{f:g}": metrics.tpr_at_fpr(m, s, f) for f in (0.001, 0.01)},
        "n_members": int(m.sum()),
        "n_nonmembers": int((~m).sum()),
    }


def _train(arch: str, x: Tensor, y: Tensor, data: Dataset, config: DPConfig | None, seed: int, log: Any) -> Any:
    """The recipe trained on ``(x, y)``: DP-SGD by ``config``, or the architecture's standard recipe; (module, record)."""
    if config is not None:
        trained = dp_train_architecture(arch, x, y, replace(config, seed=seed), log=log)
        return trained.module, trained.record
    from ...models.training import TRAIN_CONFIGS, TrainConfig, train_architecture

    plain = replace(TRAIN_CONFIGS.get(arch, TrainConfig()), seed=seed)
    part = Dataset(data.name, x, y, data.x_test[:0], data.y_test[:0], data.bounds, data.n_classes)
    return train_architecture(arch, part, plain)


def _lira(target: Tensor, references: Tensor, keep: Tensor) -> Tensor:
    """Online LiRA (Carlini et al. 2022): per canary, the log-likelihood ratio of the target's logit statistic under
    the Gaussian of the references that trained on it (``keep``) against those that did not, with one variance per
    side pooled over canaries (the paper's advice for few references); higher = more likely in.
    ``references`` (K, m) statistics, ``keep`` (K, m) bool."""
    k = keep.double()
    n_in, n_out = k.sum(0), (1 - k).sum(0)
    mu_in = (references * k).sum(0) / n_in.clamp(min=1)
    mu_out = (references * (1 - k)).sum(0) / n_out.clamp(min=1)
    mu_in = torch.where(n_in > 0, mu_in, references.max(0).values)  # no reference trained on it: the best seen
    mu_out = torch.where(n_out > 0, mu_out, references.min(0).values)
    var_in = float(((references - mu_in) ** 2 * k).sum() / k.sum().clamp(min=1)) + 1e-6
    var_out = float(((references - mu_out) ** 2 * (1 - k)).sum() / (1 - k).sum().clamp(min=1)) + 1e-6
    ll_in = -((target - mu_in) ** 2) / (2 * var_in) - 0.5 * math.log(var_in)
    ll_out = -((target - mu_out) ** 2) / (2 * var_out) - 0.5 * math.log(var_out)
    return ll_in - ll_out


def _references(
    arch: str, data: Dataset, config: DPConfig | None, cs: CanarySet, seed: int, k: int, log: Any
) -> tuple[Tensor, Tensor]:
    """``k`` reference models, each on the base records plus its own random half of the canaries (drawn
    independently of the target's, so the one-run bound still holds): their logit statistics (k, m) and
    who trained on which canary (k, m)."""
    n_base = int(cs.x.shape[0]) - int(cs.included.sum())
    g = torch.Generator().manual_seed(int(seed) + 7919)
    stats, keep = [], []
    for j in range(k):
        mask = torch.rand(cs.canary_x.shape[0], generator=g) < 0.5
        x = torch.cat([cs.x[:n_base], cs.canary_x[mask]])
        y = torch.cat([cs.y[:n_base], cs.canary_y[mask]])
        module = _train(arch, x, y, data, config, seed + 1 + j, log)[0]
        stats.append(score_canaries(module, cs.canary_x, cs.canary_y, "logit"))
        keep.append(mask)
    return torch.stack(stats), torch.stack(keep)


def _one_run(
    arch: str,
    data: Dataset,
    config: DPConfig | None,
    canaries: int,
    kind: str,
    score: str,
    seed: int,
    log: Any,
    references: int = 0,
) -> dict[str, Any]:
    """Train one model with canaries; its canary scores, inclusion, accuracy, natural-record membership."""
    cs = make_canaries(data, canaries, kind=kind, seed=seed)
    start = time.perf_counter()
    module, record = _train(arch, cs.x, cs.y, data, config, seed, log)
    if score == "lira":
        s_canary = _lira(
            score_canaries(module, cs.canary_x, cs.canary_y, "logit"),
            *_references(arch, data, config, cs, seed, references, log),
        )
        score = "logit"  # what the natural records are scored with (they have no references)
    else:
        s_canary = score_canaries(module, cs.canary_x, cs.canary_y, score)
    # natural records: the training records that are not canaries (members) against the test split
    n_nat = min(int(data.x_test.shape[0]), int(cs.x.shape[0]) - int(cs.included.sum()))
    nat_x = torch.cat([cs.x[:n_nat], data.x_test[:n_nat]])
    nat_y = torch.cat([cs.y[:n_nat], data.y_test[:n_nat]])
    nat_member = torch.arange(2 * n_nat) < n_nat
    with torch.no_grad():
        pred = torch.cat([module(data.x_test[i : i + 1000]).argmax(1) for i in range(0, data.x_test.shape[0], 1000)])
    return {
        "scores": s_canary,
        "included": cs.included,
        "record": record,
        "test_accuracy": metrics.accuracy(pred, data.y_test),
        "natural": _membership(score_canaries(module, nat_x, nat_y, score), nat_member),
        "seconds": time.perf_counter() - start,
    }


def _training_summary(rec: dict[str, Any], config: DPConfig | None) -> dict[str, Any]:
    if config is None:
        return {"recipe": "standard (non-private)", **{k: rec[k] for k in ("epochs", "batch_size", "lr")}}
    keys = ("noise_multiplier", "max_grad_norm", "sample_rate", "steps", "accountant", "secure_rng")
    return {"recipe": "dp-sgd", **{k: rec[k] for k in keys}, "epochs": config.epochs, "batch_size": config.batch_size}


def _checked(
    arch: str, data: Dataset, config: DPConfig | None, canaries: int, kind: str, score: str, runs: int, references: int
) -> float:
    """Refuse bad audit settings before any training; the delta the bounds use."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise UsageError(f"--runs must be a whole number >= 1, got {runs!r}")
    if score not in CANARY_SCORES:
        raise UsageError(f"--score: choose one of {', '.join(CANARY_SCORES)}, got {score!r}")
    if (score == "lira") != (references >= 2):
        raise UsageError("--score lira needs --references K >= 2 (reference models), and only lira uses them")
    make_canaries(data, canaries, kind=kind, seed=0)  # refuses bad canary settings
    delta = config.delta if config is not None else DPConfig().delta
    if delta >= 1.0 / max(1, data.x_train.shape[0] - canaries):
        raise UsageError(f"--delta {delta:g} is not below 1/N for {data.name}; choose a smaller delta")
    return delta


def _bounds(results: list[dict[str, Any]], delta: float, confidence: float) -> tuple[Tensor, Tensor, Any, Any]:
    """Every run's canaries pooled: (scores, inclusion, the one-run bound, the across-runs bound or None)."""
    from .epsilon import multi_run_audit, one_run_audit

    scores = torch.cat([res["scores"] for res in results])
    included = torch.cat([res["included"] for res in results])
    one = one_run_audit(scores.numpy(), included.numpy(), delta=delta, confidence=confidence)
    if len(results) < 2:
        return scores, included, one, None
    per_run = ([res["scores"].numpy() for res in results], [res["included"].numpy() for res in results])
    return scores, included, one, multi_run_audit(*per_run, delta=delta, confidence=confidence)


def canary_audit(
    arch: str,
    data: Dataset,
    config: DPConfig | None,
    *,
    canaries: int = 1000,
    kind: str = "ood",
    score: str = "loss",
    runs: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
    references: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Audit the DP-SGD recipe ``config`` on the registered architecture ``arch`` and ``data`` (``config=None``:
    the architecture's standard non-private recipe). ``score="lira"`` with ``references`` >= 2: online LiRA, each
    run also training that many reference models on its base records and a random half of the canaries. Returns a JSON-ready dict:

    ``defense``, ``epsilon`` (the accountant's, spent; ``None`` without DP), ``delta``, ``epsilon_lower_bound``
    and ``confidence`` (the one-run bound over every canary of every run), ``one_run`` and ``multi_run`` (the
    bounds' details; ``multi_run`` is ``None`` with one run), ``violation`` (a DP model whose bound exceeds its
    epsilon), ``test_accuracy`` (mean over runs), ``membership`` (the attack's AUC and TPR at low FPR on the
    canaries and on natural records: non-canary training records against the test split), ``training`` (noise
    multiplier, sampling rate, clipping norm, steps, accountant) and ``seconds``."""
    defense = "none" if config is None else "dp-sgd"
    delta = _checked(arch, data, config, canaries, kind, score, runs, references)
    start = time.perf_counter()
    results = []
    for r in range(runs):
        if log is not None:
            log(f"run {r + 1}/{runs}: training {arch} ({defense}) with {canaries} {kind} canaries")
        results.append(_one_run(arch, data, config, canaries, kind, score, seed + 1000 * r, log, references))
    scores, included, one, multi = _bounds(results, delta, confidence)
    rec = results[0]["record"]
    claimed = rec["epsilon"] if defense == "dp-sgd" else None
    bound = float(one["epsilon_lower_bound"])  # the primary bound; multi_run's holds at its own confidence
    return {
        "defense": defense,
        "arch": arch,
        "data": data.name,
        "epsilon": claimed,
        "epsilon_target": config.epsilon if config is not None else None,
        "delta": delta,
        "epsilon_lower_bound": bound,
        "confidence": confidence,
        "violation": claimed is not None and bound > claimed,
        "one_run": one,
        "multi_run": multi,
        "test_accuracy": float(np.mean([res["test_accuracy"] for res in results])),
        "canaries": {"m": canaries, "kind": kind, "score": score, "runs": runs, "included": int(included.sum())}
        | {"references": references},
        "membership": {
            "attack": score,
            "canaries": _membership(scores, included),
            "natural": results[0]["natural"],
        },
        "training": _training_summary(rec, config),
        "seconds": round(time.perf_counter() - start, 2),
    }
