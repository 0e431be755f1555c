"""``bastion privacy audit``: the empirical privacy audit of a training recipe — claimed epsilon (the accountant's)
beside an empirical lower bound (canaries; :func:`bastion.defenses.privacy.canary_audit`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from .common import Data, LabelColumn, emit, load_arch_data, refuse
from .common import log as _log
from .groups import OptionGroup, expand_groups
from .harden_dp import DPBudget

JSON_KEYS = ("epsilon", "epsilon_lower_bound", "confidence", "test_accuracy", "violation", "baseline")

ArchOpt = Annotated[str, typer.Option("--arch", help="The registered architecture the recipe trains (from scratch).")]
Defense = Annotated[str, typer.Option("--defense", help="dp-sgd (audit DP-SGD) or none (the standard recipe).")]
Epochs = Annotated[int | None, typer.Option("--epochs", help="dp-sgd: epochs (default: the architecture's recipe).")]
Canaries = Annotated[int, typer.Option("--canaries", help="Canaries m, each inserted with probability 1/2 (<= N/2).")]
Kind = Annotated[
    str, typer.Option("--canary-kind", help="ood (noise inputs, random labels) or mislabel (records, wrong label).")
]
Score = Annotated[
    str, typer.Option("--score", help="The membership signal: loss, confidence, logit (LiRA's), or lira (offline).")
]
References = Annotated[
    int, typer.Option("--references", help="--score lira: reference models per run, trained without canaries (>= 2).")
]
Runs = Annotated[int, typer.Option("--runs", help="Training runs (>= 2 adds the Clopper-Pearson bound across runs).")]
Confidence = Annotated[float, typer.Option("--confidence", help="Confidence level of the lower bound.")]
Baseline = Annotated[
    bool, typer.Option("--baseline/--no-baseline", help="dp-sgd: audit the standard non-DP recipe too (default on).")
]
FailOnViolation = Annotated[
    bool, typer.Option("--fail-on-violation", help="Exit 1 when the empirical bound exceeds the claimed epsilon.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the canaries, their inclusion and the training.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object with at least: " + ", ".join(JSON_KEYS))]


@dataclass(frozen=True)
class CanaryOptions(OptionGroup):
    """How the canaries are made, scored and turned into a bound."""

    canaries: Canaries = 500
    canary_kind: Kind = "ood"
    score: Score = "loss"
    references: References = 0
    runs: Runs = 1
    confidence: Confidence = 0.95


def _row(name: str, r: dict[str, Any]) -> str:
    claimed = "none (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
    mem = r["membership"]["canaries"]
    return (
        f"{name:<10} {claimed:>14} {r['epsilon_lower_bound']:>14.3f} {r['test_accuracy']:>9.3f} "
        f"{mem['auc']:>6.3f} {mem['tpr_at_fpr']['0.001']:>12.4f}"
    )


def _print(report: dict[str, Any]) -> None:
    conf = report["confidence"]
    typer.echo(
        f"privacy audit of {report['arch']} on {report['data']}: {report['canaries']['m']} "
        f"{report['canaries']['kind']} canaries x {report['canaries']['runs']} run(s), {report['canaries']['score']} "
        f"scores, bound at {conf:.0%} confidence (Steinke, Nasr & Jagielski 2023)"
    )
    typer.echo(
        f"{'model':<10} {'claimed eps':>14} {'empirical eps':>14} {'test acc':>9} {'AUC':>6} {'TPR@0.1%FPR':>12}"
    )
    typer.echo(_row(report["defense"], report))
    if report.get("baseline"):
        typer.echo(_row("none", report["baseline"]))
    if report["violation"]:
        typer.secho(
            f"VIOLATION: the empirical lower bound {report['epsilon_lower_bound']:.3f} exceeds the claimed epsilon "
            f"{report['epsilon']:.3f}: the training or its accounting is broken",
            fg="red",
            err=True,
        )
    elif report["epsilon"] is not None:
        typer.echo("ok: the empirical bound stays below the claimed epsilon")


@expand_groups
def privacy_audit(
    data: Data,
    arch: ArchOpt,
    defense: Defense = "dp-sgd",
    target: DPBudget = DPBudget(),
    epochs: Epochs = None,
    canary: CanaryOptions = CanaryOptions(),
    baseline: Baseline = True,
    fail_on_violation: FailOnViolation = False,
    seed: Seed = 0,
    label_column: LabelColumn = None,
    as_json: AsJson = False,
) -> None:
    """Empirical privacy audit: claimed epsilon (the accountant's) beside a measured lower bound.

    Trains the recipe once per run with --canaries records made unusual (mislabelled or noise) and inserted at
    random with probability 1/2, scores every canary with a membership attack and turns the guesses into a lower
    bound on epsilon that holds at --confidence. A DP model whose bound exceeds its claimed epsilon is a violation
    (red; exit 1 with --fail-on-violation). With --baseline the standard non-DP recipe is audited beside it."""
    from ..defenses.privacy import canary_audit, dp_config_for

    if defense not in ("dp-sgd", "none"):
        refuse(f"--defense: choose dp-sgd or none, got {defense!r}")
    if not 0 < canary.confidence < 1:
        refuse(f"--confidence must be in (0, 1), got {canary.confidence}")
    say = None if as_json else _log
    ds = load_arch_data(data, arch, label_column=label_column, say=say)
    config = None
    if defense == "dp-sgd":
        config = dp_config_for(arch, **target.named(), epochs=epochs)
    else:
        given = [k for k, v in target.flags().items() if v]
        if given:
            refuse(f"{', '.join(given)}: only with --defense dp-sgd")
    common = canary.named(canary_kind="kind") | {"seed": seed, "log": say}
    report = canary_audit(arch, ds, config, **common)
    report["baseline"] = canary_audit(arch, ds, None, **common) if baseline and config is not None else None
    emit(report, as_json, _print, default=None)
    if fail_on_violation and report["violation"]:
        raise typer.Exit(1)
