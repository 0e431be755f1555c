"""``bastion certify``: Cohen et al.'s CERTIFY on the first N test inputs of a model smoothed with Gaussian noise —
the randomized-smoothing certificate evaluation (what the paper's ``certify.py`` does), one input per row, sharded
over Ray workers with ``--workers`` / ``--ray``. The work is the library's (:func:`bastion.scale.certify_sharded`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import Data, LoadOptions, Model, check_output_file, emit, json_help, parse_numbers, progress_bar, refuse
from .common import load_model_and_data as _load
from .groups import OptionGroup, expand_groups
from .scaleopts import ScaleOptions, executor_for

JSON_KEYS = ("certified_accuracy", "abstention_rate", "clean_accuracy", "seconds", "n_inputs", "scale")

Sigma = Annotated[float, typer.Option("--sigma", help="Std of the Gaussian noise, in input units (e.g. 0.25).")]
N0 = Annotated[int, typer.Option("--n0", help="Noise samples that select the top class (Cohen: 100).")]
NSamples = Annotated[int, typer.Option("--n", help="Noise samples that estimate its probability (Cohen: 100,000).")]
Alpha = Annotated[float, typer.Option("--alpha", help="Failure probability of each certificate (Cohen: 0.001).")]
Count = Annotated[int, typer.Option("--count", help="Certify the first COUNT test inputs.")]
Radii = Annotated[str, typer.Option("--radii", help="Radii (L2) to report certified accuracy at, comma-separated.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the noise (input i draws from (seed, i)).")]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", help="Noisy samples per forward pass (default: 64 on a CPU).")
]
Out = Annotated[
    str | None, typer.Option("--out", "-o", help="Write one row per input (TSV: idx label predict radius correct).")
]
AsJson = Annotated[bool, typer.Option("--json", help=json_help(JSON_KEYS))]


@dataclass(frozen=True)
class Smoothing(OptionGroup):
    """The smoothed classifier: its noise and Cohen et al.'s sample counts and failure probability."""

    sigma: Sigma
    n0: N0 = 100
    n: NSamples = 10_000
    alpha: Alpha = 0.001


def _radii(text: str) -> list[float]:
    out = sorted(set(parse_numbers(text, "--radii", float, "numbers")))
    if not out or any(r < 0 for r in out):
        refuse(f"--radii: give radii >= 0, e.g. 0,0.25,0.5, got {text!r}")
    return out


def _columns() -> tuple[Any, ...]:
    """The progress bar's columns: what it is, the bar, inputs done of all, time."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return TextColumn("certify"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()


@expand_groups
def certify(
    model: Model,
    data: Data,
    smoothing: Smoothing,
    count: Count = 200,
    radii: Radii = "0,0.25,0.5,0.75,1",
    seed: Seed = 0,
    batch_size: BatchSize = None,
    out: Out = None,
    scale: ScaleOptions = ScaleOptions(),
    load: LoadOptions = LoadOptions(),
    as_json: AsJson = False,
) -> None:
    """Certify a smoothed model: for each of the first --count test inputs, the class the Gaussian-smoothed model
    predicts and the L2 radius within which that prediction provably cannot change (Cohen et al. 2019), or an
    abstention. Reports certified accuracy at --radii.

    The base model should be trained with noise of the same sigma (`bastion harden --defense gaussian`). Input i's
    noise comes from (--seed, i), so --workers N (or --ray HOST:PORT) spreads the inputs over more CPUs or machines and
    gives the same certificates."""
    from ..defenses.certification import ABSTAIN, SmoothedClassifier
    from ..scale import certify_sharded

    grid = _radii(radii)
    if count < 1:
        refuse(f"--count must be >= 1, got {count}")
    out_path = check_output_file(out, "--out") if out is not None else None
    clf, ds = _load(model, data, load, quiet=as_json)
    smoothed = SmoothedClassifier(clf, **smoothing.named(), batch_size=batch_size, seed=seed)
    x, y = ds.x_test[:count], ds.y_test[:count]
    start = time.perf_counter()
    with executor_for(scale, quiet=as_json) as ex:
        with progress_bar("certify", int(x.shape[0]), quiet=as_json, columns=_columns) as progress:
            labels, rad, _counts = certify_sharded(smoothed, x, executor=ex, progress=progress)
        described = ex.describe()
    seconds = time.perf_counter() - start
    correct = labels.cpu() == y.cpu()
    record = {
        "model": model,
        "data": data,
        **smoothing.named(),
        "seed": seed,
        "n_inputs": int(x.shape[0]),
        "certified_accuracy": {f"{r:g}": float((correct & (rad.cpu() >= r)).double().mean()) for r in grid},
        "clean_accuracy": float(correct.double().mean()),
        "abstention_rate": float((labels == ABSTAIN).double().mean()),
        "seconds": round(seconds, 3),
        "seconds_per_input": round(seconds / max(1, int(x.shape[0])), 4),
        "scale": {k: v for k, v in described.items() if k != "maps"} | {"shards": described["maps"][0]["shards"]},
    }
    if out_path is not None:
        _write_rows(out_path, labels, rad, y, correct)
        record["out"] = str(out_path)
    emit(record, as_json, _print)


def _write_rows(path: Path, labels: Any, radii: Any, y: Any, correct: Any) -> None:
    rows = ["idx\tlabel\tpredict\tradius\tcorrect"]
    for i, (lab, r, t, c) in enumerate(zip(labels.tolist(), radii.tolist(), y.tolist(), correct.tolist())):
        rows.append(f"{i}\t{t}\t{lab}\t{r:.4f}\t{int(c)}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _print(r: dict[str, Any]) -> None:
    typer.echo(
        f"certified {r['n_inputs']} inputs (sigma={r['sigma']:g}, n0={r['n0']}, n={r['n']}, alpha={r['alpha']:g}) "
        f"in {r['seconds']:.1f} s on {r['scale']['workers']} worker(s) ({r['scale']['backend']})"
    )
    typer.echo(f"{'radius':>8}  {'certified accuracy':>18}")
    for radius, acc in r["certified_accuracy"].items():
        typer.echo(f"{radius:>8}  {acc:>18.3f}")
    typer.echo(f"abstained on {r['abstention_rate']:.1%}; smoothed accuracy {r['clean_accuracy']:.3f}")
    if "out" in r:
        typer.echo(f"per-input rows written to {r['out']}")
