"""``bastion audit``: the audit from the command line (registered by :mod:`bastion.cli`)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import typer

from ..errors import UsageError
from .common import fail as _fail
from .common import json_default as _json_default
from .common import log as _log


def audit(
    model: str = typer.Option(
        ..., "--model", "-m", help="zoo:NAME, a model file, module:function, or an http(s):// URL."
    ),
    data: str = typer.Option(
        ..., "--data", "-d", help="digits, mnist5k, breast-cancer, or a .npz/.csv file or image folder."
    ),
    out: str = typer.Option(
        ..., "--out", "-o", help="Output directory: report.json, index.html, junit.xml (and the resumable state)."
    ),
    profile: str = typer.Option(
        "quick", "--profile", "-p", help="quick (minutes), standard (the evaluation to report) or thorough."
    ),
    eps: list[str] = typer.Option(
        [],
        "--eps",
        help="eps values to audit, comma-separated or repeated (default: 5/10/20/30% of the input range for linf).",
    ),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    n: int | None = typer.Option(None, "--n", help="Number of test inputs audited (default: the profile's)."),
    probes: str | None = typer.Option(
        None,
        "--probes",
        help="Comma-separated subset of probes: model, whitebox, minimum-norm, blackbox, noise, patch, certification, detection.",
    ),
    fail_under: list[str] = typer.Option(
        [],
        "--fail-under",
        help="Gate, repeatable: 'robust_accuracy@eps=0.1>=0.5', 'clean_accuracy>=0.95'. Exit code 1 when one fails.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed every probe's randomness derives from (same seed, model and data: same numbers)."
    ),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name for a weights-only model file."),
    smooth: float | None = typer.Option(
        None,
        "--smooth",
        help="Audit the model behind randomized smoothing with this noise sigma (adds the certification probe's numbers).",
    ),
    smooth_n: int = typer.Option(
        1000,
        "--smooth-n",
        help="With --smooth: noise samples per prediction (Cohen's n); the certification probe uses the profile's n.",
    ),
    detector: str | None = typer.Option(
        None,
        "--detector",
        help="Audit the model behind an adversarial-input detector (mahalanobis, activations, squeeze), fitted on the training split and calibrated on held-out training inputs; the detection probe attacks the combination adaptively.",
    ),
    detector_fpr: float = typer.Option(
        0.05, "--detector-fpr", help="With --detector: the false-positive rate its threshold is calibrated to."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print exactly one JSON object (verdict, metrics, gates, probes)."
    ),
) -> None:
    """Audit a model: run every probe of a profile and write a risk report (index.html, report.json, junit.xml).

    Probes: clean accuracy and model sanity; white-box evasion (FGSM, PGD, APGD ensemble) against eps;
    minimum-norm perturbations (DeepFool, C&W); black-box evasion (Square, HopSkipJump) with query
    counts; a random-noise baseline; an adversarial patch for image models. Evaluation-validity checks
    (gradient masking, convergence, restarts, ...) are reported as pass / warn / fail.

    Interrupted (Ctrl-C), the same command resumes after the last finished probe. Exit codes: 0 done
    and every gate passed, 1 a gate failed, 2 a usage error (nothing is written that looks like a report).
    """
    import time

    from ..audit import get_profile, parse_gate
    from ..audit.profiles import default_eps
    from ..audit.runner import run_audit
    from ..data import load_dataset
    from ..models.loading import load_model
    from ..threat import canonical_norm

    prof = get_profile(profile)  # UsageError -> exit 2 before anything loads
    try:
        norm_c = canonical_norm(norm)
    except ValueError as exc:
        _fail(f"--norm: {exc}")
    if norm_c not in ("linf", "l2"):
        _fail(f"--norm: the audit supports linf and l2, not {norm}")
    eps_values: list[float] = []
    for chunk in eps:
        for part in chunk.split(","):
            if part.strip():
                try:
                    eps_values.append(float(part))
                except ValueError:
                    _fail(f"--eps: {part.strip()!r} is not a number")
    if any(not math.isfinite(e) or e <= 0 for e in eps_values):
        _fail(f"--eps: every eps must be a finite number > 0, got {eps_values}")
    if n is not None and n < 1:
        _fail(f"--n must be >= 1, got {n}")
    names = [p.strip() for p in probes.split(",") if p.strip()] if probes else None
    if names:
        unknown = [p for p in names if p not in prof.probes]
        if unknown:
            _fail(f"--probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(prof.probes)}")
    for g in fail_under:  # syntax and metric names now; eps membership once the model's defaults are known
        parse_gate(g)
    from pathlib import Path

    if Path(out).exists() and not Path(out).is_dir():
        _fail(f"--out: {out} exists and is not a directory")
    try:
        clf = load_model(model, arch=arch, log=None if as_json else _log)
    except (UsageError, ValueError):
        raise
    except Exception as exc:  # a file that is not a loadable model
        _fail(f"--model: cannot load {model!r}: {type(exc).__name__}: {exc}")
    try:
        ds = load_dataset(data)
    except (UsageError, ValueError):
        raise
    except Exception as exc:
        _fail(f"--data: cannot load {data!r}: {type(exc).__name__}: {exc}")
    gates = [parse_gate(g, eps_values or default_eps(norm_c, clf.bounds, tuple(clf.input_shape))) for g in fail_under]
    if smooth is not None and detector is not None:
        _fail("--smooth and --detector do not combine: audit one defence at a time")
    if detector is not None:
        from ..defenses.detection import DETECTORS, DetectingClassifier, get_detector

        if detector not in DETECTORS:
            _fail(f"--detector: unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        if not 0 < detector_fpr < 1:
            _fail(f"--detector-fpr must lie in (0, 1), got {detector_fpr}")
        n_tr = int(ds.x_train.shape[0])
        k = min(1000, n_tr // 4)
        if k < 20:
            _fail(f"--detector: the training split of {data} is too small to fit and calibrate a detector")
        det = get_detector(detector)
        det.fit(clf, ds.x_train[k : k + 3000], ds.y_train[k : k + 3000])
        det.calibrate(ds.x_train[:k], fpr=detector_fpr)
        clf = DetectingClassifier(clf, det)
        model = f"{model} (+ {detector} detector, {detector_fpr:.0%} false positives)"
    if smooth is not None:
        from ..defenses.certification import SmoothedClassifier

        if smooth_n < 1:
            _fail(f"--smooth-n must be >= 1, got {smooth_n}")
        clf = SmoothedClassifier(clf, smooth, n=smooth_n, seed=seed)
        model = f"{model} (smoothed: sigma={smooth:g}, n={smooth_n})"

    show_bar = not as_json and sys.stderr.isatty()
    lines: list[str] = []

    def on_probe(res: Any, resumed: bool) -> None:
        if as_json:
            return
        tag = "resumed" if resumed else f"{res.seconds:6.1f} s"
        line = f"{res.probe:<13} {res.status:<7} risk {res.risk:<6} {tag:>9}  {res.summary}"
        if bar_ctx is not None:
            bar_ctx.console.print(line, markup=False, highlight=False)
        else:
            _log(line)
        lines.append(line)

    bar_ctx = None
    start = time.perf_counter()
    try:
        if show_bar:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[msg]}"),
                TimeElapsedColumn(),
                transient=True,
            ) as bar:
                bar_ctx = bar
                tasks: dict[str, Any] = {}

                def progress(probe: str, fraction: float, msg: str) -> None:
                    if probe not in tasks:
                        tasks[probe] = bar.add_task(probe, total=1.0, msg="")
                    bar.update(tasks[probe], completed=fraction, msg=msg)

                report = run_audit(
                    clf,
                    ds,
                    out,
                    profile=prof.name,
                    norm=norm_c,
                    eps=eps_values or None,
                    n=n,
                    seed=seed,
                    probes=names,
                    gates=gates,
                    model_spec=model,
                    data_spec=data,
                    progress=progress,
                    on_probe=on_probe,
                )
        else:
            report = run_audit(
                clf,
                ds,
                out,
                profile=prof.name,
                norm=norm_c,
                eps=eps_values or None,
                n=n,
                seed=seed,
                probes=names,
                gates=gates,
                model_spec=model,
                data_spec=data,
                on_probe=on_probe,
            )
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: finished probes are saved in {out}; run the same command to resume", err=True)
        raise typer.Exit(130) from None
    failed = [g for g in report["gates"] if not g["passed"]]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "out": str(out),
                    "verdict": report["verdict"],
                    "metrics": report["metrics"],
                    "gates": report["gates"],
                    "probes": [
                        {k: p[k] for k in ("probe", "status", "risk", "summary", "seconds")} for p in report["probes"]
                    ],
                    "checks": [{k: c[k] for k in ("id", "status")} for c in report["checks"]],
                    "seconds": round(time.perf_counter() - start, 2),
                },
                default=_json_default,
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"bastion audit: {model} on {data} ({prof.name}, {norm_c})", title_justify="left")
        for c in ("probe", "status", "risk", "result"):
            t.add_column(c)
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
            c.print(
                f"gate {g['expression']}: {'pass' if g['passed'] else 'FAIL'} (measured {g['value']})", markup=False
            )
        c.print(f"report: {Path(out) / 'index.html'}  ({round(time.perf_counter() - start, 1)} s)", markup=False)
    if failed:
        raise typer.Exit(1)
