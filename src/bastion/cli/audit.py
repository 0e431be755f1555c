"""``bastion audit``: the audit from the command line (registered by :mod:`bastion.cli`).

The command checks every option and the output directory first (one line, exit 2, nothing written), loads
the model and the data, puts the asked defence in front of the model (a detector fitted and calibrated by
:func:`bastion.audit.fit_detector`, or randomized smoothing), runs :func:`bastion.audit.run_audit` with a
progress bar on a terminal, and prints the table or one JSON object.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from .common import Data, LoadOptions, Model, echo_json, load_model_and_data
from .common import fail as _fail
from .common import log as _log
from .groups import expand_groups
from .scaleopts import ScaleOptions, executor_for

_PROBES_HELP = (
    "Comma-separated subset of the profile's probes: model, whitebox, minimum-norm, blackbox, noise, patch, "
    "certification, detection, poisoning, backdoor, membership, privacy, inversion, extraction, federated."
)
_DETECTOR_HELP = (
    "Audit the model behind an adversarial-input detector (mahalanobis, activations, squeeze), fitted on the "
    "training split and calibrated on held-out training inputs; the detection probe attacks the combination "
    "adaptively."
)

Out = Annotated[
    str,
    typer.Option(
        ...,
        "--out",
        "-o",
        help="Output directory (created in an existing folder): report.json, index.html, junit.xml, resumable state.",
    ),
]
ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="quick (minutes), standard (the evaluation to report) or thorough.")
]
Eps = Annotated[
    list[str],
    typer.Option(
        "--eps",
        help="eps values to audit, comma-separated or repeated (default: 5/10/20/30% of the input range for linf).",
    ),
]
Norm = Annotated[str, typer.Option("--norm", help="linf or l2.")]
N = Annotated[int | None, typer.Option("--n", help="Number of test inputs audited (default: the profile's).")]
Probes = Annotated[str | None, typer.Option("--probes", help=_PROBES_HELP)]
FailUnder = Annotated[
    list[str],
    typer.Option(
        "--fail-under",
        help="Gate, repeatable: 'robust_accuracy@eps=0.1>=0.5', 'clean_accuracy>=0.95'. Exit code 1 when one fails.",
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed", help="Seed every probe's randomness derives from (same seed, model and data: same numbers)."
    ),
]
Smooth = Annotated[
    float | None,
    typer.Option(
        "--smooth",
        help="Audit the model behind randomized smoothing with this noise sigma (adds the certification probe's numbers).",
    ),
]
SmoothN = Annotated[
    int,
    typer.Option(
        "--smooth-n",
        help="With --smooth: noise samples per prediction (Cohen's n); the certification probe uses the profile's n.",
    ),
]
DetectorOpt = Annotated[str | None, typer.Option("--detector", help=_DETECTOR_HELP)]
DetectorFpr = Annotated[
    float,
    typer.Option("--detector-fpr", help="With --detector: the false-positive rate its threshold is calibrated to."),
]
AsJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print exactly one JSON object (out, n_inputs, verdict, metrics, gates, probes, checks, seconds).",
    ),
]


@dataclass
class _Args:
    """The audit's options, checked before anything loads."""

    profile: str
    norm: str
    eps: list[float]
    n: int | None
    probes: list[str] | None
    fail_under: list[str]


def _eps_values(eps: list[str]) -> list[float]:
    values: list[float] = []
    for chunk in eps:
        for part in chunk.split(","):
            if part.strip():
                try:
                    values.append(float(part))
                except ValueError:
                    _fail(f"--eps: {part.strip()!r} is not a number")
    if any(not math.isfinite(e) or e <= 0 for e in values):
        _fail(f"--eps: every eps must be a finite number > 0, got {values}")
    return values


def _check_options(
    profile: str, norm: str, eps: list[str], n: int | None, probes: str | None, fail_under: list[str], out: str
) -> _Args:
    """Every option that can be checked without the model: one line and exit 2 before anything loads."""
    from ..audit import get_profile, parse_gate
    from ..audit.state import check_out_dir
    from ..threat import canonical_norm

    prof = get_profile(profile)  # UsageError -> exit 2 before anything loads
    try:
        norm_c = canonical_norm(norm)
    except ValueError as exc:
        _fail(f"--norm: {exc}")
    if norm_c not in ("linf", "l2"):
        _fail(f"--norm: the audit supports linf and l2, not {norm}")
    eps_values = _eps_values(eps)
    if n is not None and n < 1:
        _fail(f"--n must be >= 1, got {n}")
    names = [p.strip() for p in probes.split(",") if p.strip()] if probes else None
    unknown = [p for p in names or [] if p not in prof.probes]
    if unknown:
        _fail(f"--probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(prof.probes)}")
    for g in fail_under:  # syntax and metric names now; eps membership once the model's defaults are known
        parse_gate(g)
    check_out_dir(Path(out).expanduser())
    return _Args(prof.name, norm_c, eps_values, n, names, list(fail_under))


def _check_defence(smooth: float | None, smooth_n: int, detector: str | None, detector_fpr: float) -> None:
    from ..defenses.detection import DETECTORS

    if smooth is not None and detector is not None:
        _fail("--smooth and --detector do not combine: audit one defence at a time")
    if detector is not None and detector not in DETECTORS:
        _fail(f"--detector: unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector is not None and not 0 < detector_fpr < 1:
        _fail(f"--detector-fpr must lie in (0, 1), got {detector_fpr}")
    if smooth is not None and (not math.isfinite(smooth) or smooth <= 0):
        _fail(f"--smooth must be a noise sigma > 0, got {smooth}")
    if smooth is not None and smooth_n < 1:
        _fail(f"--smooth-n must be >= 1, got {smooth_n}")


def _defend(
    clf: Any, ds: Any, spec: str, smooth: float | None, smooth_n: int, detector: str | None, fpr: float, seed: int
) -> tuple[Any, str]:
    """The model behind the asked defence, and how the report names it."""
    if detector is not None:
        from ..audit import fit_detector
        from ..defenses.detection import DetectingClassifier

        try:
            det = fit_detector(clf, ds, detector, fpr=fpr)
        except UsageError as exc:
            _fail(f"--detector: {exc}")
        return DetectingClassifier(clf, det), f"{spec} (+ {detector} detector, {fpr:.0%} false positives)"
    if smooth is not None:
        from ..defenses.certification import SmoothedClassifier

        return SmoothedClassifier(
            clf, smooth, n=smooth_n, seed=seed
        ), f"{spec} (smoothed: sigma={smooth:g}, n={smooth_n})"
    return clf, spec


def _run(
    clf: Any,
    ds: Any,
    out: str,
    args: _Args,
    gates: list[Any],
    seed: int,
    specs: tuple[str, str],
    quiet: bool,
    executor: Any = None,
) -> Any:
    """:func:`run_audit` with one line per finished probe on stderr and, on a terminal, a progress bar."""
    from ..audit.runner import run_audit

    live: list[Any] = []  # the progress bar, once there is one: lines go above it

    def on_probe(res: Any, resumed: bool) -> None:
        if quiet:
            return
        tag = f"resumed ({res.seconds:.1f} s)" if resumed else f"{res.seconds:6.1f} s"
        line = f"{res.probe:<13} {res.status:<7} risk {res.risk:<6} {tag:>9}  {res.summary}"
        if live:
            live[0].console.print(line, markup=False, highlight=False)
        else:
            _log(line)

    kwargs: dict[str, Any] = dict(profile=args.profile, norm=args.norm, eps=args.eps or None, n=args.n, seed=seed)
    kwargs.update(probes=args.probes, gates=gates, model_spec=specs[0], data_spec=specs[1], on_probe=on_probe)
    kwargs.update(executor=executor)
    if quiet or not sys.stderr.isatty():
        return run_audit(clf, ds, out, **kwargs)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[msg]}"), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        live.append(bar)
        tasks: dict[str, Any] = {}

        def progress(probe: str, fraction: float, msg: str) -> None:
            if probe not in tasks:
                tasks[probe] = bar.add_task(probe, total=1.0, msg="")
            bar.update(tasks[probe], completed=fraction, msg=msg)

        return run_audit(clf, ds, out, progress=progress, **kwargs)


def _print_json(report: dict[str, Any], out: str, seconds: float) -> None:
    probes = [{k: p[k] for k in ("probe", "status", "risk", "summary", "seconds")} for p in report["probes"]]
    record = {
        "out": str(out),
        "n_inputs": report["settings"]["n"],
        "verdict": report["verdict"],
        "metrics": report["metrics"],
        "gates": report["gates"],
        "probes": probes,
        "checks": [{k: c[k] for k in ("id", "status")} for c in report["checks"]],
        "seconds": round(seconds, 2),
        "audit_seconds": report["seconds"],
        "scale": {k: report["scale"][k] for k in ("backend", "workers")},
    }
    echo_json(record)


def _print_table(report: dict[str, Any], title: str, out: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("probe", "status", "risk", "result"):
        t.add_column(col)
    for p in report["probes"]:
        t.add_row(p["title"], p["status"], p["risk"], p["summary"])
    c = Console()
    c.print(t)
    bad = [ch for ch in report["checks"] if ch["status"] in ("warn", "fail")]
    c.print(
        f"validity: {report['verdict']['validity']} ({len(report['checks'])} checks"
        + (f"; {', '.join(ch['id'] + ' ' + ch['status'] for ch in bad)}" if bad else "")
        + ")"
    )
    for g in report["gates"]:
        c.print(f"gate {g['expression']}: {'pass' if g['passed'] else 'FAIL'} (measured {g['value']})", markup=False)
    took = f"{round(seconds, 1)} s"
    if report.get("resumed"):
        took = f"{round(report['seconds'], 1)} s in all, {took} in this run: resumed"
    c.print(f"report: {Path(out) / 'index.html'}  ({report['settings']['n']} inputs, {took})", markup=False)


@expand_groups
def audit(
    model: Model,
    data: Data,
    out: Out,
    profile: ProfileOpt = "quick",
    eps: Eps = [],  # noqa: B006 - typer reads the default; it is never mutated
    norm: Norm = "linf",
    n: N = None,
    probes: Probes = None,
    fail_under: FailUnder = [],  # noqa: B006
    seed: Seed = 0,
    load: LoadOptions = LoadOptions(),
    smooth: Smooth = None,
    smooth_n: SmoothN = 1000,
    detector: DetectorOpt = None,
    detector_fpr: DetectorFpr = 0.05,
    scale: ScaleOptions = ScaleOptions(),
    as_json: AsJson = False,
) -> None:
    """Audit a model: run every probe of a profile and write a risk report (index.html, report.json, junit.xml).

    Probes: clean accuracy and model sanity; white-box evasion (FGSM, PGD, APGD ensemble) against eps;
    minimum-norm perturbations (DeepFool, C&W); black-box evasion (Square, HopSkipJump) with query
    counts; a random-noise baseline; an adversarial patch for image models. Evaluation-validity checks
    (gradient masking, convergence, restarts, ...) are reported as pass / warn / fail.

    --workers N / --ray HOST:PORT run the probes' shards on Ray (same numbers; finished shards are kept, so a
    lost worker or an interrupted run loses none). Interrupted (Ctrl-C), the same command resumes after the
    last finished probe (and shard). Exit codes: 0 done
    and every gate passed, 1 a gate failed, 2 a usage error (nothing is written that looks like a report).
    """
    from ..audit import parse_gate
    from ..audit.profiles import default_eps

    args = _check_options(profile, norm, eps, n, probes, fail_under, out)
    _check_defence(smooth, smooth_n, detector, detector_fpr)
    # a split made for the data is said, --json or not
    clf, ds = load_model_and_data(model, data, load, quiet=as_json, say_split=True)
    gates = [parse_gate(g, args.eps or default_eps(args.norm, clf.bounds, tuple(clf.input_shape))) for g in fail_under]
    clf, spec = _defend(clf, ds, model, smooth, smooth_n, detector, detector_fpr, seed)
    start = time.perf_counter()
    try:
        with executor_for(scale, quiet=as_json) as ex:
            report = _run(clf, ds, out, args, gates, seed, (spec, data), quiet=as_json, executor=ex)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: finished probes are saved in {out}; run the same command to resume", err=True)
        raise typer.Exit(130) from None
    seconds = time.perf_counter() - start
    if as_json:
        _print_json(report, out, seconds)
    else:
        _print_table(report, f"bastion audit: {spec} on {data} ({args.profile}, {args.norm})", out, seconds)
    if any(not g["passed"] for g in report["gates"]):
        raise typer.Exit(1)
