"""``bastion attack``: one evasion attack on a model and a dataset.

The command builds the attack from the options (every one checked before the model loads, the
``--save-patch`` path included), loads the model and the data, snaps the records onto ``--constraints``
for the tabular attack, runs the attack on the first ``--n`` test inputs and prints a table or one JSON
object.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from .common import Data, LoadOptions, Model, check_output_file, echo_json, json_help, load_model_and_data, progress_bar
from .common import fail as _fail
from .common import log as _log
from .groups import OptionGroup, expand_groups
from .scaleopts import ScaleOptions, executor_for

JSON_KEYS = ("clean_accuracy", "robust_accuracy", "success_rate", "median_perturbation", "queries", "seconds")
"""The keys of ``--json``, with ``n_inputs`` (the number of test inputs attacked) and, with ``--constraints``,
``snapped_records`` (how many of them were moved onto the constraints before the attack)."""

_DEFAULT_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}
_CONSTRAINTS_HELP = (
    "With --attack tabular: a JSON or TOML file of feature constraints (immutable, integer, categorical, ranges, "
    "norm, eps; features by name or index)."
)

AttackName = Annotated[str, typer.Option("--attack", "-a", help="Attack name (see the list below).")]
Eps = Annotated[
    float | None,
    typer.Option(
        "--eps",
        help="Perturbation budget in input space (default 0.3 for linf, 2.0 for l2, 10 for l1; none for cw/deepfool).",
    ),
]
Norm = Annotated[
    str | None,
    typer.Option(
        "--norm", help="linf, l2 or l1 (l1: pgd only); default: the attack's own (linf; l2 for cw and deepfool)."
    ),
]
N = Annotated[int, typer.Option("--n", help="Number of test samples to attack (the first n).")]
Steps = Annotated[int | None, typer.Option("--steps", help="Iterations, for iterative attacks.")]
StepSize = Annotated[float | None, typer.Option("--step-size", help="Step size, for PGD-style attacks.")]
Restarts = Annotated[int | None, typer.Option("--restarts", help="Random restarts, where supported.")]
MaxQueries = Annotated[
    int | None, typer.Option("--max-queries", help="Query budget per input, for query-based (black-box) attacks.")
]
Targeted = Annotated[
    bool, typer.Option("--targeted", help="Attack random target labels (seeded) instead of any wrong label.")
]
EarlyStop = Annotated[
    bool, typer.Option("--early-stop/--no-early-stop", help="Stop attacking a sample once it is misclassified.")
]
SavePatch = Annotated[
    str | None,
    typer.Option(
        "--save-patch",
        help="With --attack patch: write the trained patch as a PNG (one file per target: NAME-tK.png); "
        "the folder must exist.",
    ),
]
Constraints = Annotated[str | None, typer.Option("--constraints", help=_CONSTRAINTS_HELP)]
BatchSize = Annotated[
    int, typer.Option("--batch-size", help="Samples per batch and per shard (shard k is seeded from --seed and k).")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the attack's random generator.")]
AsJson = Annotated[
    bool,
    typer.Option("--json", help=json_help((*JSON_KEYS, "n_inputs"), " (+ snapped_records with --constraints).")),
]


@dataclass(frozen=True)
class Tuning(OptionGroup):
    """The attack's own settings: passed to it only where given, and refused by an attack that does not take one."""

    steps: Steps = None
    step_size: StepSize = None
    restarts: Restarts = None
    max_queries: MaxQueries = None


def _read_spec(path: str, option: str) -> dict[str, Any]:
    """A JSON (``.json``) or TOML (``.toml``) file holding one mapping."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        _fail(f"{option}: no such file {path!r}")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            spec = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            spec = json.loads(text)
        else:
            _fail(f"{option}: {path!r} must be a .json or .toml file")
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        _fail(f"{option}: {path} is not valid {p.suffix.lstrip('.').upper()}: {exc}")
    if not isinstance(spec, dict):
        _fail(f"{option}: {path} must hold one mapping, got {type(spec).__name__}")
    return spec


def _constraints_budget(
    constraints: str | None, name: str, norm: str | None, eps: float | None
) -> tuple[dict[str, Any] | None, str | None, float | None]:
    """The constraints file's mapping without its budget, and the budget: the options' where given, else the
    file's (the budget is the attack's, given once)."""
    if constraints is None:
        return None, norm, eps
    if name != "tabular":
        _fail("--constraints only applies to --attack tabular")
    spec = _read_spec(constraints, "--constraints")
    if norm is None and "norm" in spec:
        norm = str(spec["norm"])
    if eps is None and spec.get("eps") is not None:
        value = spec["eps"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(f"--constraints: eps must be a number, got {value!r}")
        eps = float(value)
    return {k: v for k, v in spec.items() if k not in ("norm", "eps")}, norm, eps


def _attack_kwargs(
    cls: Any, name: str, norm: str | None, eps: float | None, tuning: Tuning, options: dict[str, Any]
) -> dict[str, Any]:
    """The attack's constructor arguments from the options; an option the attack does not take is refused."""
    from ..threat import canonical_norm

    params = inspect.signature(cls.__init__).parameters
    try:
        norm = canonical_norm(norm if norm is not None else params["norm"].default)
    except ValueError as exc:
        _fail(f"--norm: {exc}")
    if norm not in cls.norms:
        _fail(f"--norm: the {name} attack supports {', '.join(cls.norms)}, not {norm}")
    if eps is not None and (not math.isfinite(eps) or eps < 0):
        _fail(f"--eps must be a finite number >= 0, got {eps}")
    kwargs: dict[str, Any] = {"norm": norm, "batch_size": options["batch_size"], "seed": options["seed"]}
    if eps is not None:
        kwargs["eps"] = eps
    elif not getattr(cls, "minimum_norm", False):
        kwargs["eps"] = _DEFAULT_EPS[norm]
    for key, value in tuning.named().items():
        if value is not None:
            if key not in params:
                _fail(f"--{key.replace('_', '-')} does not apply to the {name} attack")
            kwargs[key] = value
    if "early_stop" in params:
        kwargs["early_stop"] = options["early_stop"]
    return {k: v for k, v in kwargs.items() if k in params}


def _check_save_patch(save_patch: str | None, name: str) -> Path | None:
    if save_patch is None:
        return None
    if name != "patch":
        _fail("--save-patch only applies to --attack patch")
    if not save_patch.lower().endswith(".png"):
        _fail(f"--save-patch must name a .png file, got {save_patch!r}")
    return check_output_file(save_patch, "--save-patch")


def _snap(spec: dict[str, Any], constraints: str, x: Any, clf: Any, ds: Any, quiet: bool) -> tuple[Any, Any, int]:
    """The constraints, the records snapped onto them, and how many records were not feasible before."""
    from ..attacks.evasion.constraints import FeatureConstraints

    try:
        cons = FeatureConstraints.from_dict(spec, math.prod(clf.input_shape), ds.feature_names)
        feasible = cons.snap(x, bounds=clf.bounds)
    except UsageError as exc:
        _fail(f"--constraints {constraints}: {exc}")
    # off their grid, categories or ranges beyond check()'s tolerance: a float32 record already on its grid may
    # come back an ulp away from snap() and is not counted
    snapped = int((~cons.check(x, x, bounds=clf.bounds)).sum())
    if snapped and not quiet:
        _log(
            f"{snapped} of {x.shape[0]} records were off their integer grid, categories or ranges: "
            "snapped onto the constraints before the attack"
        )
    return cons, feasible, snapped


def _execute(atk: Any, clf: Any, x: Any, y: Any, targets: Any, label: str, quiet: bool, ex: Any) -> Any:
    """The attack, shard by shard (``--batch-size`` inputs each, shard k seeded from --seed and k) on the executor of
    ``--workers`` / ``--ray`` (this process without them): the same numbers either way. A patch is trained over all
    inputs at once, so it runs in one piece here. A progress bar over the shards when stderr is a terminal."""
    from ..scale import shard_attack

    if atk.name == "patch":  # (refused with --workers / --ray before anything loads)
        return atk(clf, x, y, targets)
    shards = -(-int(x.shape[0]) // atk.batch_size)
    with progress_bar(label, shards, quiet=quiet) as progress:
        return shard_attack(atk, clf, x, y, targets, executor=ex, shard_size=atk.batch_size, progress=progress)


def _save_patches(result: Any, path: Path, bounds: tuple[float, float], quiet: bool) -> None:
    from ..attacks.evasion.patch import save_png

    for t, patch in result.extra.get("patches", {}).items():
        target_path = path if t is None else path.with_name(f"{path.stem}-t{t}.png")
        save_png(patch, target_path, bounds=bounds)
        if not quiet:
            _log(f"patch written to {target_path}")


def _print_table(atk: Any, result: Any, model: str, data: str, n_inputs: int, targeted: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{atk!r}", title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    threat = result.threat
    rows = [
        ("model", model),
        ("data", f"{data} (first {n_inputs} test samples)"),
        ("threat", f"{threat.norm}, eps={threat.eps}, bounds={threat.bounds}" + (", targeted" if targeted else "")),
        ("clean accuracy", f"{result.clean_accuracy:.4f}"),
        ("robust accuracy", f"{result.robust_accuracy:.4f}"),
        ("attack success rate", f"{result.success_rate:.4f}"),
        (
            f"median perturbation ({threat.norm})",
            "n/a" if math.isnan(result.median_perturbation) else f"{result.median_perturbation:.4f}",
        ),
        ("model queries", f"{result.queries}"),
        ("gradient passes", f"{result.gradients}"),
        ("seconds", f"{result.seconds:.2f}"),
    ]
    for row in rows:
        t.add_row(*row)
    Console().print(t)


@expand_groups
def attack(
    model: Model,
    data: Data,
    attack_name: AttackName = "pgd",
    eps: Eps = None,
    norm: Norm = None,
    n: N = 1000,
    tuning: Tuning = Tuning(),
    targeted: Targeted = False,
    early_stop: EarlyStop = True,
    load: LoadOptions = LoadOptions(),
    save_patch: SavePatch = None,
    constraints: Constraints = None,
    batch_size: BatchSize = 250,
    seed: Seed = 0,
    scale: ScaleOptions = ScaleOptions(),
    as_json: AsJson = False,
) -> None:
    """Attack a model on a dataset and print clean/robust accuracy, success rate, median norm, queries and seconds.

    Attacks: fgsm, pgd, mifgsm, apgd-ce, apgd-dlr, apgd-t, cw, deepfool, ensemble (white-box); square,
    simba, hopskipjump, boundary, noise, transfer, tabular (query-based, --max-queries); patch.

    With --json: one object with clean_accuracy, robust_accuracy, success_rate, median_perturbation,
    queries, seconds and n_inputs; with --constraints also snapped_records (the records moved onto the
    constraints before the attack).

    The inputs are attacked in shards of --batch-size, shard k seeded from --seed and k; --workers N or --ray
    HOST:PORT runs the shards on Ray with the same results.
    """
    import torch

    from ..attacks import ATTACKS, get_attack

    name = attack_name.strip().lower()
    if name not in ATTACKS:
        _fail(f"--attack: unknown attack {attack_name!r}; choose one of {', '.join(sorted(ATTACKS))}")
    if name == "patch" and scale.given:
        _fail("--workers/--ray: the patch attack trains one patch over all inputs and does not shard")
    spec, norm, eps = _constraints_budget(constraints, name, norm, eps)
    if n < 1:
        _fail(f"--n must be >= 1, got {n}")
    options = dict(early_stop=early_stop, batch_size=batch_size, seed=seed)
    kwargs = _attack_kwargs(ATTACKS[name], name, norm, eps, tuning, options)
    patch_path = _check_save_patch(save_patch, name)
    atk = get_attack(name, **kwargs)
    # a split made for the data is said, --json or not
    clf, ds = load_model_and_data(model, data, load, quiet=as_json, say_split=True)
    x, y = ds.x_test[:n], ds.y_test[:n]
    if tuple(x.shape[1:]) != tuple(clf.input_shape):
        _fail(f"--data: {data} has inputs of shape {tuple(x.shape[1:])} but the model expects {tuple(clf.input_shape)}")
    snapped = None
    if spec is not None and constraints is not None:
        cons, x, snapped = _snap(spec, constraints, x, clf, ds, quiet=as_json)
        atk = get_attack(name, **kwargs, constraints=cons)
    targets = None
    if targeted:
        shift = torch.randint(1, clf.n_classes, y.shape, generator=torch.Generator().manual_seed(seed))
        targets = (y + shift) % clf.n_classes
    with executor_for(scale, quiet=as_json) as ex:
        result = _execute(atk, clf, x, y, targets, f"{name} on {x.shape[0]} samples", as_json, ex)
    if patch_path is not None:
        _save_patches(result, patch_path, clf.bounds, quiet=as_json)
    if not as_json:
        _print_table(atk, result, model, data, int(x.shape[0]), targeted)
        return
    summary = {**result.summary(), "n_inputs": int(x.shape[0])}
    if snapped is not None:
        summary["snapped_records"] = snapped
    echo_json(summary, finite_values=True)
