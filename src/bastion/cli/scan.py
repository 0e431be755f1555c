"""``bastion scan``: is this model backdoored? Neural Cleanse (Wang et al. 2019) on the model alone, with a little
clean data. The work is the library's (:class:`bastion.defenses.sanitization.NeuralCleanse`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import Data, LoadOptions, Model, emit, json_help, load_model_and_data, parse_numbers, refuse
from .common import log as _log
from .groups import expand_groups

JSON_KEYS = ("anomaly_index", "flagged", "norms", "trigger_asr", "seconds", "n_inputs")

N = Annotated[int, typer.Option("--n", help="Clean inputs the scan optimises on (the first N of the test split).")]
Classes = Annotated[
    str | None, typer.Option("--classes", help="Scan only these classes, comma-separated (default: all).")
]
Threshold = Annotated[
    float, typer.Option("--threshold", help="Flag a class whose anomaly index exceeds this (Wang et al.: 2).")
]
Steps = Annotated[int | None, typer.Option("--steps", help="Optimisation steps per class (default: the scanner's).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the scan's random initialisation and batches.")]
Out = Annotated[
    str | None, typer.Option("--out", "-o", help="Folder for the reversed triggers (one PNG per class; created).")
]
AsJson = Annotated[bool, typer.Option("--json", help=json_help(JSON_KEYS))]


def _classes(text: str | None, n_classes: int) -> list[int] | None:
    if text is None:
        return None
    out = sorted(set(parse_numbers(text, "--classes", int, "class indices")))
    if not out or any(not 0 <= c < n_classes for c in out):
        refuse(f"--classes: every class must lie in [0, {n_classes - 1}], got {text!r}")
    return out


def _check_out(out: str | None) -> Path | None:
    if out is None:
        return None
    p = Path(out)
    if p.exists() and not p.is_dir():
        refuse(f"--out: {out} is a file; give a folder for the reversed triggers")
    if not p.parent.exists():
        refuse(f"--out: the folder {p.parent} does not exist: create it first or choose another path")
    return p


@expand_groups
def scan(
    model: Model,
    data: Data,
    n: N = 500,
    classes: Classes = None,
    threshold: Threshold = 2.0,
    steps: Steps = None,
    seed: Seed = 0,
    out: Out = None,
    load: LoadOptions = LoadOptions(),
    as_json: AsJson = False,
) -> None:
    """Scan a model for a backdoor: reverse-engineer the smallest trigger that flips clean inputs to each class
    (Neural Cleanse); a class whose trigger is abnormally small (anomaly index > --threshold) is flagged.

    Needs a white-box torch model and image data. Exit code 0 whether or not a class is flagged: read "flagged"."""
    from ..defenses.sanitization import NeuralCleanse

    out_dir = _check_out(out)
    if n < 2:
        refuse(f"--n must be >= 2, got {n}")
    kwargs: dict[str, Any] = {"threshold": threshold, "seed": seed}
    if steps is not None:
        kwargs["steps"] = steps
    scanner = NeuralCleanse(**kwargs)
    clf, ds = load_model_and_data(model, data, load, quiet=as_json)
    chosen = _classes(classes, int(clf.n_classes))
    if chosen is not None:
        scanner = NeuralCleanse(**kwargs, classes=chosen)
    x, y = ds.x_test[:n], ds.y_test[:n]
    progress = None if as_json else (lambda done, total, msg="": _log(f"  class {msg} ({done}/{total})"))
    result = scanner.scan(clf, x, y, progress=progress)
    report = result.to_dict()
    report["n_inputs"] = int(x.shape[0])
    if out_dir is not None:
        out_dir.mkdir(exist_ok=True)
        report["triggers"] = [str(p) for p in result.save_triggers(out_dir)]
    emit(report, as_json, lambda r: _print(r, threshold))


def _print(report: dict[str, Any], threshold: float) -> None:
    typer.echo(f"{'class':>5}  {'trigger L1':>10}  {'anomaly index':>13}  {'trigger ASR':>11}")
    classes = report.get("classes") or list(range(len(report["norms"])))
    for c, norm, idx, asr in zip(classes, report["norms"], report["anomaly_index"], report["trigger_asr"]):
        mark = "  <- flagged" if c in report["flagged"] else ""
        typer.echo(f"{c:>5}  {norm:>10.2f}  {idx:>13.2f}  {asr:>11.3f}{mark}")
    if report["flagged"]:
        flagged = ", ".join(map(str, report["flagged"]))
        typer.echo(f"backdoor suspected: class {flagged} (anomaly index > {threshold:g}) in {report['seconds']:.0f} s")
    else:
        typer.echo(f"no class flagged (every anomaly index <= {threshold:g}) in {report['seconds']:.0f} s")
    if "triggers" in report:
        typer.echo(f"reversed triggers written to {Path(report['triggers'][0]).parent}")
