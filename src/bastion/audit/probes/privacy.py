"""Differential privacy: what the model's training recipe actually leaks, measured against what it claims.

A model trained with DP-SGD (``bastion harden --defense dp-sgd``) carries its training record in the
safetensors metadata: ``bastion_defense`` (the recipe: target epsilon, delta, clipping norm, epochs, batch size,
learning rate, accountant, ...) and ``bastion_record`` (what the accountant spent: ``epsilon``, ``delta``,
``noise_multiplier``, ``max_grad_norm``, ``sample_rate``, ``steps``, ``accountant``, ``secure_rng``). The probe
reads them — from the ``model_file`` parameter (a ``.safetensors`` path) or from a ``metadata`` mapping on the
classifier (the raw safetensors metadata, as a loader may attach it) — shows them in the report, and audits the
recipe empirically (:func:`bastion.defenses.privacy.audit.canary_audit`): ``canaries`` canaries (``kind``: noise
inputs with random labels by default, or mislabelled training records), each inserted with probability 1/2, one training of the model's architecture with the recorded DP
recipe (a model without DP: the architecture's standard recipe, no noise), a membership score per canary
(``score``), and a lower bound on epsilon that holds at ``confidence`` (Steinke, Nasr & Jagielski 2023's one-run
bound; with ``runs >= 2`` also Jagielski, Ullman & Oprea 2020's across runs). ``canaries`` is capped at half the
training split. The probe retrains, so it needs a torch model whose architecture bastion can build (``zoo:`` and
``.safetensors`` models, or the ``arch`` parameter) and data with a training split of that input shape.

Metrics: ``privacy_epsilon`` (the claim: the epsilon the accountant spent; only with DP), ``privacy_delta``,
``privacy_epsilon_lower_bound`` (and ``[multi-run]`` with several runs), ``privacy_test_accuracy`` (the retrained
model on the test split), ``privacy_canary_auc``, ``privacy_canary_tpr@fpr=0.001`` / ``@fpr=0.01`` and
``privacy_natural_auc`` (the same attack on ordinary training records against the test split).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ...errors import UsageError
from ..probe import AuditContext, RetrainingProbe, register_probe
from ..result import Check, Plot, ProbeResult, Series

__all__ = ["PrivacyProbe", "dp_config_from", "dp_summary", "model_metadata"]

_DP_KEYS = ("noise_multiplier", "max_grad_norm", "sample_rate", "steps", "accountant", "secure_rng")
_CONFIG_KEYS = ("delta", "max_grad_norm", "epochs", "batch_size", "lr", "momentum", "optimizer", "accountant", "seed")
_WEAK_CLAIM = 10.0  # a kept claim above this bounds no practical attack: medium risk


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def model_metadata(model: Any, model_file: str | None = None) -> dict[str, Any] | None:
    """The model's training metadata, ``{"bastion_defense": dict | None, "bastion_record": dict | None}`` with the
    JSON values parsed: from the ``.safetensors`` file ``model_file``, else from the classifier's ``metadata``
    mapping; ``None`` when neither is there."""
    if model_file is not None:
        from safetensors import safe_open

        try:
            with safe_open(str(model_file), "pt") as f:
                raw: Mapping[str, Any] = f.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's input
            raise UsageError(f"probe 'privacy': cannot read the metadata of {model_file}: {exc}") from None
    else:
        found = getattr(model, "metadata", None)
        if not isinstance(found, Mapping):
            return None
        raw = found
    out = {k: _parsed(raw.get(k)) for k in ("bastion_defense", "bastion_record")}
    return {k: (v if isinstance(v, dict) else None) for k, v in out.items()}


def dp_summary(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the report shows of a DP model's record: claimed (spent) epsilon, target, delta, accountant, noise
    multiplier, clipping norm, sampling rate, steps, secure RNG; ``None`` when the model was not trained with DP."""
    config = (meta or {}).get("bastion_defense") or {}
    if config.get("defense") != "dp-sgd":
        return None
    record = (meta or {}).get("bastion_record") or {}
    spent = record.get("epsilon", config.get("epsilon"))
    out = {"epsilon": spent, "epsilon_target": config.get("epsilon_target", config.get("epsilon"))}
    out["delta"] = record.get("delta", config.get("delta"))
    out.update({k: record.get(k, config.get(k)) for k in _DP_KEYS})
    return out


def dp_config_from(arch: str, config: Mapping[str, Any]) -> Any:
    """The :class:`~bastion.defenses.privacy.dpsgd.DPConfig` a DP model was trained with, from its recorded
    ``bastion_defense``: the target epsilon (or, without one, the fixed noise multiplier) and the recorded delta,
    clipping norm, epochs, batch size, learning rate, momentum, optimizer, accountant and seed; what was not
    recorded comes from the architecture's recipe."""
    from ...defenses.privacy.dpsgd import dp_config_for

    given: dict[str, Any] = {k: config[k] for k in _CONFIG_KEYS if config.get(k) is not None}
    target = config.get("epsilon_target", config.get("epsilon"))
    if target is not None:
        given["epsilon"] = float(target)
    elif config.get("noise_multiplier") is not None:
        given["noise_multiplier"] = float(config["noise_multiplier"])
    return dp_config_for(arch, **given)


@register_probe
class PrivacyProbe(
    RetrainingProbe,
    name="privacy",
    title="Differential privacy (canary audit)",
    threat="privacy / training-data leakage",
):
    """The model's recorded DP claim next to a canary audit's lower bound on epsilon for its training recipe.

    Checks: ``empirical-epsilon-below-claim`` fails when the lower bound exceeds the claimed epsilon — impossible
    for a correct DP implementation except with probability 1 - confidence, so a bug in the training or the
    accounting; without DP there is no claim and the check passes, reporting the bound as the measured leakage.
    ``retrained-matches-model`` warns when the retrained model's test accuracy is more than ``max_accuracy_gap``
    from the audited model's (the recipe audited is then not the one that trained the model).

    Risk: a violated claim is high; without a claim (no DP, or DP without noise) a lower bound >= 1 is high,
    >= 0.1 medium, else low; a kept claim is low, medium when it is above 10 (a guarantee too weak to bound a practical attack).

    Parameters:
        canaries: canaries inserted (a whole number >= 2; capped at half the training split).
        runs: trainings (>= 1); two or more add the across-runs bound.
        kind: the canaries: ``ood`` (noise inputs with random labels) or ``mislabel`` (mislabelled training records).
        score: the membership score per canary: ``loss``, ``confidence``, ``logit`` or ``lira``.
        references: reference models per run for ``lira`` (>= 2 with it; only it uses them).
        confidence: the confidence the lower bound holds at, in (0, 1).
        arch: the registered architecture retrained (``None``: the audited model's).
        model_file: the ``.safetensors`` file whose metadata holds the training record (``None``: the
            classifier's ``metadata``).
        max_accuracy_gap: the test-accuracy gap ``retrained-matches-model`` allows.
    """

    retrains = "its training cannot be audited with canaries"
    defaults: ClassVar[dict[str, Any]] = {
        "canaries": 500,
        "runs": 1,
        "kind": "ood",
        "score": "loss",
        "references": 0,
        "confidence": 0.95,
        "arch": None,
        "model_file": None,
        "max_accuracy_gap": 0.05,
    }

    def check_params(self, p: dict[str, Any]) -> None:
        from ...defenses.privacy.audit import CANARY_KINDS, CANARY_SCORES

        for key, low in (("canaries", 2), ("runs", 1)):
            v = p[key]
            if v < low:
                raise UsageError(f"probe 'privacy': {key} must be a whole number >= {low}, got {v!r}")
        if p["kind"] not in CANARY_KINDS:
            raise UsageError(f"probe 'privacy': kind must be one of {', '.join(CANARY_KINDS)}, got {p['kind']!r}")
        if p["score"] not in CANARY_SCORES:
            raise UsageError(f"probe 'privacy': score must be one of {', '.join(CANARY_SCORES)}, got {p['score']!r}")
        if (p["score"] == "lira") != (p["references"] >= 2):
            raise UsageError("probe 'privacy': score 'lira' needs references >= 2, and only lira uses them")
        if not 0 < p["confidence"] < 1:
            raise UsageError(f"probe 'privacy': confidence must lie in (0, 1), got {p['confidence']!r}")
        if p["model_file"] is not None and not Path(p["model_file"]).is_file():
            raise UsageError(f"probe 'privacy': model_file {p['model_file']!r} is not a file")

    def run(self, ctx: AuditContext) -> ProbeResult:
        from ...defenses.privacy.audit import canary_audit

        p = self.params
        arch = self._arch(ctx)
        assert arch is not None  # skip_reason said so
        meta = model_metadata(ctx.model, p["model_file"])
        dp = dp_summary(meta)
        config = dp_config_from(arch, (meta or {}).get("bastion_defense") or {}) if dp is not None else None
        m = min(p["canaries"], int(ctx.data.x_train.shape[0]) // 2)
        runs = p["runs"]
        started = [0]

        def log(message: str) -> None:
            if message.startswith("run "):
                started[0] += 1
            ctx.report(self.name, 0.95 * max(started[0] - 1, 0) / runs, message)

        ctx.report(self.name, 0.0, f"training {arch} with {m} canaries")
        audit = canary_audit(
            arch,
            ctx.data,
            config,
            canaries=m,
            kind=p["kind"],
            score=p["score"],
            references=p["references"],
            runs=runs,
            confidence=p["confidence"],
            seed=ctx.seed_for(self.name),
            log=log,
        )
        ctx.report(self.name, 1.0, "done")
        return self._result(ctx, arch, audit, dp, meta)

    def _result(
        self, ctx: AuditContext, arch: str, audit: dict[str, Any], dp: dict[str, Any] | None, meta: Any
    ) -> ProbeResult:
        metrics = _metrics(audit, dp)
        claim = audit["epsilon"] if dp is not None else None
        risk, verdict = _risk(claim, audit)
        model_acc = self.model_test_accuracy(ctx)
        assumptions = _assumptions(meta, dp, audit)
        return self.result(
            ctx,
            risk=risk,
            summary=f"{_claim_text(dp, meta)}; {verdict}",
            params={
                **self.params,
                "arch": arch,
                "canaries": audit["canaries"]["m"],
                "differential_privacy": dp if dp is not None else "no differential privacy",
            },
            metrics=metrics,
            plots=[_bound_plot(audit, claim)],
            checks=[_below_claim(audit, claim), self._matches_model(audit, model_acc)],
            artifacts={"differential_privacy": dp, "canary_audit": audit, "assumptions": assumptions},
        )

    def _matches_model(self, audit: dict[str, Any], model_acc: float) -> Check:
        title = "The retrained model behaves like the audited one"
        retrained, limit = float(audit["test_accuracy"]), self.params["max_accuracy_gap"]
        ev = {"retrained_test_accuracy": retrained, "model_test_accuracy": model_acc, "limit": limit}
        if abs(retrained - model_acc) > limit:
            return Check(
                "retrained-matches-model",
                title,
                "warn",
                f"The recipe audited reaches {retrained:.3f} test accuracy, the model {model_acc:.3f}: it is not the "
                "recipe the model was trained with, so the bound describes another training (give the probe the "
                "model's file or arch).",
                ev,
            )
        return Check(
            "retrained-matches-model",
            title,
            "pass",
            f"The recipe audited reaches {retrained:.3f} test accuracy, the model {model_acc:.3f}.",
            ev,
        )


def _metrics(audit: dict[str, Any], dp: dict[str, Any] | None) -> dict[str, float | None]:
    canary, natural = audit["membership"]["canaries"], audit["membership"]["natural"]
    out: dict[str, float | None] = {}
    if dp is not None and dp["epsilon"] is not None:
        out["privacy_epsilon"] = dp["epsilon"]  # the model's claim: the epsilon its accountant spent
    out["privacy_delta"] = audit["delta"]
    out["privacy_epsilon_lower_bound"] = audit["epsilon_lower_bound"]
    if audit.get("multi_run") is not None:
        out["privacy_epsilon_lower_bound[multi-run]"] = audit["multi_run"]["epsilon_lower_bound"]
    out["privacy_test_accuracy"] = audit["test_accuracy"]
    out["privacy_canary_auc"] = canary["auc"]
    for f, v in canary["tpr_at_fpr"].items():
        out[f"privacy_canary_tpr@fpr={f}"] = v
    out["privacy_natural_auc"] = natural["auc"]
    return out


def _risk(claim: float | None, audit: dict[str, Any]) -> tuple[str, str]:
    """(risk, the verdict's half of the summary)."""
    bound, conf = float(audit["epsilon_lower_bound"]), float(audit["confidence"])
    c = audit["canaries"]
    tpr = audit["membership"]["canaries"]["tpr_at_fpr"]["0.001"]
    how = (
        f"{c['m']} {c['kind']} canaries, {c['runs']} run{'s' if c['runs'] > 1 else ''}; canary AUC "
        f"{audit['membership']['canaries']['auc']:.3f}, TPR {tpr:.1%} at 0.1% FPR; retrained accuracy "
        f"{audit['test_accuracy']:.3f}"
    )
    if claim is not None and audit["violation"]:
        return "high", f"VIOLATED: the canary audit proves epsilon >= {bound:.2f} at {conf:.0%} confidence ({how})"
    if claim is not None:
        risk = "medium" if claim > _WEAK_CLAIM else "low"
        return (
            risk,
            f"the canary audit bounds epsilon below by {bound:.2f} at {conf:.0%} confidence, within the claim ({how})",
        )
    risk = "high" if bound >= 1 else "medium" if bound >= 0.1 else "low"
    return risk, f"the canary audit measures epsilon >= {bound:.2f} at {conf:.0%} confidence ({how})"


def _claim_text(dp: dict[str, Any] | None, meta: Any) -> str:
    if dp is None:
        return "no differential privacy" + ("" if meta is not None else " (no training record came with the model)")
    eps = dp["epsilon"]
    claim = "no noise, no guarantee" if eps is None else f"claims epsilon {eps:.2f} at delta {dp['delta']:g}"
    return (
        f"DP-SGD {claim} ({dp['accountant']} accountant, noise multiplier {dp['noise_multiplier']:.3g}, clipping "
        f"{dp['max_grad_norm']:g}, sampling rate {dp['sample_rate']:.3g}, {dp['steps']} steps, secure RNG "
        f"{dp['secure_rng'] or 'no'})"
    )


def _below_claim(audit: dict[str, Any], claim: float | None) -> Check:
    title = "Empirical epsilon is below the claimed epsilon"
    bound, conf = float(audit["epsilon_lower_bound"]), float(audit["confidence"])
    ev = {"claimed_epsilon": claim, "epsilon_lower_bound": bound, "confidence": conf, "delta": audit["delta"]}
    if claim is None:
        return Check(
            "empirical-epsilon-below-claim",
            title,
            "pass",
            f"No differential-privacy claim to check: the model was trained without a finite epsilon; the canary "
            f"audit measures epsilon >= {bound:.2f} at {conf:.0%} confidence, the leakage of its recipe.",
            ev,
        )
    if audit["violation"]:
        return Check(
            "empirical-epsilon-below-claim",
            title,
            "fail",
            f"The canary audit proves epsilon >= {bound:.2f} at {conf:.0%} confidence, above the claimed "
            f"{claim:.2f}: the training or its accounting is broken (missing noise, wrong sampling rate, a "
            "record seen outside the private steps).",
            ev,
        )
    return Check(
        "empirical-epsilon-below-claim",
        title,
        "pass",
        f"The canary audit bounds epsilon below by {bound:.2f} at {conf:.0%} confidence, within the claimed "
        f"{claim:.2f} (a lower bound: the claim is not proved, only not refuted).",
        ev,
    )


def _bound_plot(audit: dict[str, Any], claim: float | None) -> Plot:
    rows = audit["one_run"]["per_guesses"]
    xs = [float(r["r"]) for r in rows]
    series = [Series("one-run lower bound", xs, [float(r["epsilon"]) for r in rows])]
    if claim is not None and math.isfinite(claim):
        series.append(Series("claimed epsilon", [xs[0], xs[-1]], [float(claim), float(claim)]))
    return Plot(
        "privacy-epsilon-bound",
        "Empirical epsilon lower bound by number of guesses (log)",
        "line",
        "canaries guessed",
        "epsilon",
        series,
        x_log=True,
    )


def _assumptions(meta: Any, dp: dict[str, Any] | None, audit: dict[str, Any]) -> list[str]:
    out = [
        "the audited data's training split is the model's training set; the audit retrains the architecture on it "
        "with canaries, so the bound describes the recipe, not the released weights"
    ]
    if meta is None:
        out.append(
            "no training record came with the model (give the probe model_file=PATH of its .safetensors): "
            "audited as trained without differential privacy"
        )
    defense = ((meta or {}).get("bastion_defense") or {}).get("defense")
    if dp is None and defense:
        out.append(f"the model was trained with {defense!r}, not DP: audited with the architecture's standard recipe")
    if dp is not None and audit["epsilon"] is not None and dp["epsilon"] is not None:
        out.append(
            f"the audit's retraining spent epsilon {audit['epsilon']:.2f} (the model's record: {dp['epsilon']:.2f})"
        )
    return out
